import { randomBytes } from 'node:crypto';
import { access, chmod, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { z } from 'zod';
import {
  BlueGreenId, Cutover, EnsureInstance, InstanceId, retiredKeepDays, type BlueGreen, type Instance, type InstanceNode, type StartBlueGreen, type TableStats, type WrappedKey,
} from '#core/agent-api.ts';
import { majorOf, type PostgresSettings } from '#core/catalog.ts';
import { BadRequest, Conflict, NotFound, Unprocessable, type FieldIssue } from '#core/errors.ts';
import type { HostedInstance, InstanceAccess } from './backups/service.ts';
import {
  advanceWalPast, cleanupSource, copySchema, drain, endSourceSessions, fenceSource, finishTarget, prepareSource, replicationProgress, rowCounts, subscribe,
  syncSequences, vacuum, withClient, type AdminEndpoint,
} from './blue-green.ts';
import { InjectedFault, type Faults } from './faults.ts';
import { createGateway, type Gateway } from './gateway.ts';
import type { PostgresInstall } from './host.ts';
import { errorMessage, log } from './log.ts';
import {
  adminRole, initCluster, makePrivateDir, settingsProblems, spawnPostmaster, stopStalePostmaster, writeServerConfig,
  type RunAs, type ServerPaths,
} from './postgres.ts';
import {
  copyPrimary, dropReplication, lowersStandbyMinimums, prepareReplication, replicaLag, replicaReplayedNow, standbyServerSettings, standbySettings, writeStandbySignal,
} from './replica.ts';
import { supervise, type Supervisor } from './supervisor.ts';

/**
 * What `<dataDir>/instances/<id>/state.json` holds: enough to bring the instance back after a restart.
 * `port` is the server's; `gatewayPort` the stable endpoint clients use (absent in a state.json older than the gateway).
 */
const SavedInstance = z.object({
  id: InstanceId, port: z.number().int(), gatewayPort: z.number().int().optional(), spec: EnsureInstance,
  /** Its streaming replica: the replica server's port and the replication role's password (see replica.ts). */
  replica: z.object({ port: z.number().int(), password: z.string().min(16) }).optional(),
  /** After an odd number of switchovers the primary's data is in the second folder (see Slot). */
  swapped: z.boolean().optional(),
  /** The id of the last switchover done, so that a retried request does not switch back. */
  lastSwitchover: z.string().optional(),
  /** The folder, inside the instance's, of its servers' folders (see Slot) since a major upgrade; absent: the instance's own. */
  folder: z.string().optional(),
  /** A major upgrade's new server (blue/green), built in `folder` on `port` until its cutover (then `cutover` says what it checked). */
  blueGreen: z.object({
    id: BlueGreenId, fromVersion: z.string(), version: EnsureInstance.shape.version, port: z.number().int(), folder: z.string(), cutover: Cutover.optional(),
    /**
     * From the cutover until the upgrade is finished or rolled back: the old server's place (see blueView), where it
     * runs on as a logical subscriber of the new one, so that a rollback takes back every write made meanwhile.
     */
    blue: z.object({ port: z.number().int(), folder: z.string().optional(), swapped: z.boolean().optional() }).optional(),
    rolledBackAt: z.string().optional(),
  }).optional(),
  /** Server folders of earlier majors (paths inside the instance's folder), stopped and kept until `removeAfter` for a rollback. */
  retired: z.array(z.object({ version: z.string(), paths: z.array(z.string()), removeAfter: z.string() })).optional(),
});
type SavedInstance = z.infer<typeof SavedInstance>;
type StoredInstance = SavedInstance & { gatewayPort: number };

/**
 * An instance's two server folders: `first` (`<id>/data`) where it was created, `second`
 * (`<id>/replica/data`) where its replica was copied. A switchover swaps their roles, not their files.
 * After a major upgrade both are inside the new server's folder (`<id>/<folder>/data`, `<id>/<folder>/replica/data`).
 */
type Slot = 'first' | 'second';
const primarySlot = (stored: StoredInstance): Slot => (stored.swapped ? 'second' : 'first');
const replicaSlot = (stored: StoredInstance): Slot => (stored.swapped ? 'first' : 'second');

interface Managed {
  stored: StoredInstance;
  /** The primary's server. */
  supervisor: Supervisor;
  /** Absent only when it could not listen after an agent restart (logged); clients then cannot reach the server. */
  gateway?: Gateway;
  /** The replica's server, once its data is copied (stored.replica says which port it owns). */
  replica?: Supervisor;
  /** A major upgrade's new server until its cutover (stored.blueGreen). */
  green?: Supervisor;
  /** A major upgrade's old server from its cutover until it is finished or rolled back (stored.blueGreen.blue). */
  blue?: Supervisor;
  /** Its replication errors since this agent started watching them, and when their count last grew (see blueGreenView). */
  greenErrors?: { baseline: number; count: number; grewAt: number };
  /** The version and settings each folder's server was last started with; undefined until it starts (or while it is restarting). */
  applied: Partial<Record<Slot, { version: string; settings: PostgresSettings }>>;
  /** While a switchover runs, the gateway holds new connections instead of sending them to a server. */
  holding: boolean;
  /** The replica waits to restart on lower settings until it has replayed the restarted primary's (see lowersStandbyMinimums). */
  replicaRestartPending: boolean;
  /** The last copy of the primary into the replica failed (see reseedReplicaLater): the replica reads as `failed`. */
  replicaCopyFailed?: boolean;
}

export interface InstanceManager extends InstanceAccess {
  /**
   * With `nodes`: the primary and its replica, with the replica's lag read on the primary. With `replicaWaitMs`,
   * answered once the replica caught up (lag 0) or failed, or that long later.
   */
  get(id: string, replicaWaitMs?: number): Promise<Instance | undefined>;
  /**
   * `restart: 'replica'` records the spec and restarts only the replica on it (the primary keeps its
   * settings until a switchover or the next ensure): the first step of a rolling change.
   */
  ensure(id: string, spec: EnsureInstance, options?: { restart?: 'all' | 'replica' }): Promise<Instance>;
  /** Ensures a streaming replica of the instance on this host (idempotent); does not wait for it to catch up. */
  ensureReplica(id: string): Promise<Instance>;
  /**
   * The replica becomes the primary: the gateway holds new connections, the primary shuts down (its
   * sessions get a moment to finish) after sending all its WAL, the replica replays it and is promoted,
   * the gateway sends connections to it; the old primary then rejoins as its replica.
   */
  switchover(id: string, switchoverId: string): Promise<Instance>;
  /** Stops the replica, drops its slot on the primary and removes its files; absent is fine. */
  removeReplica(id: string): Promise<void>;
  remove(id: string): Promise<void>;
  /**
   * A major upgrade, blue/green: the primary gets wal_level = logical (a restart with new connections held, if
   * needed); a server of `version` is made in its own folder on its own port, the roles and schema are copied and
   * each database subscribes to the primary's. Idempotent; answers once the initial copy has started.
   */
  startBlueGreen(id: string, request: StartBlueGreen): Promise<BlueGreen>;
  /** With `waitMs`, a `building` upgrade is answered once it is ready or failed, or that long later. */
  getBlueGreen(id: string, blueGreenId: string, waitMs?: number): Promise<BlueGreen | undefined>;
  /**
   * New connections are held; the old server's sessions end, the subscriptions drain, sequences are copied and every
   * user table's row count compared: a difference releases clients back to the old server (409). Else the new server
   * becomes the primary (saved before clients are released); the old one stops, its folder kept for a rollback period.
   */
  cutover(id: string, blueGreenId: string): Promise<BlueGreen>;
  /** Before the cutover: the new server and its folder go, the old server's slots and publications too; absent is fine. */
  abandonBlueGreen(id: string, blueGreenId: string): Promise<void>;
  /**
   * After the cutover, once the upgrade is verified: the old server stops following the new one (the reverse
   * subscriptions, their slots and the publications go) and stops, its folder kept for the rollback period. Idempotent.
   */
  finishBlueGreen(id: string, blueGreenId: string): Promise<BlueGreen>;
  /**
   * After the cutover, before it is finished: new connections are held, the new server's sessions end and its tables
   * are fenced, the old server applies what is left, takes the sequences and must have every row; it becomes the
   * primary again (saved before clients are released) and the new server goes with its folder. Idempotent.
   */
  rollBackBlueGreen(id: string, blueGreenId: string): Promise<BlueGreen>;
  /** Prepares the data folder and brings back every instance found in it. */
  resumeAll(): Promise<void>;
  /** Removes the server folders of earlier majors whose rollback period is over (also done at resumeAll); never throws. */
  removeExpiredFolders(): Promise<void>;
  stopAll(): Promise<void>;
}

export interface InstanceManagerOptions {
  dataDir: string;
  installs: PostgresInstall[];
  runAs: RunAs | undefined;
  faults: Faults;
  /** Extra server settings for a database (WAL archiving when it has a data key); written last, before every start. */
  serverSettings?: (databaseId: string, dataKey: WrappedKey | undefined) => Promise<string[]>;
}

const host = '127.0.0.1';
/** A switchover starts holding clients only once the replica has at most this much WAL left to replay. */
const switchoverMaxLagBytes = 4 * 1024 * 1024;
const switchoverCatchUpMs = 15_000;
/** How long sessions may finish their work (a smart shutdown) before a restart or a switchover ends them. */
const sessionGraceMs = 300;
const rejoinTimeoutMs = 10_000;
const replicaRestartWaitMs = 60_000;
/** How long a planned restart waits for the WAL archive to catch up before it holds clients (see stopPrimaryHeld). */
const archiveCatchUpMs = 60_000;
/** A blue/green upgrade is ready for its cutover once every subscription has at most this much WAL left to apply. */
const cutoverMaxLagBytes = 4 * 1024 * 1024;
/** The longest the cutover waits for the subscriptions to apply what is left: before holding clients, then while they are held. */
const cutoverDrainMs = 10_000;
/**
 * A failing apply worker retries every 5 s (wal_retrieve_retry_interval): this many errors is one that will not
 * heal (DDL on the old server); one or two are a lost connection (the old server or the agent restarted).
 */
const replicationErrorsFailing = 3;
/** A blue/green upgrade is ready only once its error count has not grown for this long. */
const replicationQuietMs = 15_000;
/**
 * A blue/green upgrade's new server before its cutover: archive_mode on (changing it later would need a restart)
 * but nothing archived: its WAL belongs to no backup (the post-upgrade base backup is taken after the cutover),
 * and its file names would be the old server's (see advanceWalPast). WAL files it switches past are not zero-filled.
 */
const greenBuildSettings = ['archive_mode = on', "archive_command = 'true'", 'wal_init_zero = off', 'wal_level = logical'];
const reservedDatabases = new Set(['postgres', 'template0', 'template1']);
/** How long an adopted data directory's first start may take: it replays the WAL a base backup holds (see InstanceAccess.adopt). */
const adoptTimeoutMs = 10 * 60_000;

export function createInstanceManager({ dataDir, installs, runAs, faults, serverSettings }: InstanceManagerOptions): InstanceManager {
  const instancesDir = join(dataDir, 'instances');
  // Sockets live in <dataDir>/sockets/<port>, not in the instance folder: an instance id can be 63
  // characters and a unix socket path must fit in 107 bytes.
  const socketsDir = join(dataDir, 'sockets');
  const instances = new Map<string, Managed>();
  const queues = new Map<string, Promise<unknown>>();

  const instanceDir = (id: string) => join(instancesDir, id);
  /** Where the instance's server folders are: its own folder, or since a major upgrade the new server's. */
  const baseDir = (stored: Pick<StoredInstance, 'id' | 'folder'>) => (stored.folder ? join(instanceDir(stored.id), stored.folder) : instanceDir(stored.id));
  const nodePaths = (stored: StoredInstance, slot: Slot, port: number): ServerPaths => {
    const dir = slot === 'first' ? baseDir(stored) : join(baseDir(stored), 'replica');
    return { data: join(dir, 'data'), log: join(dir, 'log'), socket: join(socketsDir, String(port)) };
  };
  const serverPaths = (stored: StoredInstance) => nodePaths(stored, primarySlot(stored), stored.port);
  const replicaPaths = (stored: StoredInstance, port: number) => nodePaths(stored, replicaSlot(stored), port);
  const endpoint = (stored: StoredInstance): AdminEndpoint => ({ port: stored.port, paths: serverPaths(stored) });
  /**
   * The instance as its blue/green server sees it until the cutover: a primary of the target version in its own
   * folder and port, without replica. The cutover makes it the instance's own view (same folder, port and version).
   */
  const greenView = (stored: StoredInstance): StoredInstance => {
    const { replica: _replica, swapped: _swapped, blueGreen, ...rest } = stored;
    return { ...rest, folder: blueGreen!.folder, port: blueGreen!.port, spec: { ...stored.spec, version: blueGreen!.version } };
  };
  /** The instance as its old server sees it from a major upgrade's cutover until the upgrade is finished or rolled back. */
  const blueView = (stored: StoredInstance): StoredInstance => {
    const { replica: _replica, swapped: _swapped, folder: _folder, blueGreen, ...rest } = stored;
    const { port, folder, swapped } = blueGreen!.blue!;
    return { ...rest, port, ...(folder ? { folder } : {}), ...(swapped ? { swapped } : {}), spec: { ...stored.spec, version: blueGreen!.fromVersion } };
  };
  /** The folders of an instance's servers, relative to its own folder: what a major upgrade retires. */
  const serverFolders = (stored: StoredInstance) => (stored.folder ? [stored.folder] : ['data', 'log', 'replica']);

  /** Calls for one instance run one after the other; calls for different instances do not wait for each other. */
  function serialized<T>(id: string, task: () => Promise<T>): Promise<T> {
    const result = (queues.get(id) ?? Promise.resolve()).then(task);
    const settled = result.catch(() => undefined);
    queues.set(id, settled);
    void settled.then(() => { if (queues.get(id) === settled) queues.delete(id); });
    return result;
  }

  async function saveState(stored: StoredInstance): Promise<void> {
    const file = join(instanceDir(stored.id), 'state.json');
    await writeFile(`${file}.tmp`, JSON.stringify(stored, null, 2), { mode: 0o600 });
    await rename(`${file}.tmp`, file);
  }

  function manage(stored: StoredInstance): Managed {
    const managed = { stored, applied: {}, holding: false, replicaRestartPending: false } as Omit<Managed, 'supervisor'> as Managed;
    managed.supervisor = superviseNode(managed, primarySlot(stored));
    return managed;
  }

  /**
   * One server folder's server, restarted on a crash. Whether it starts as the primary or as a hot
   * standby streaming from it is read at every start (the lifecycle reads managed.stored when it runs,
   * so a changed spec or a switchover applies from the next start).
   */
  function superviseNode(managed: Managed, slot: Slot, current: () => StoredInstance = () => managed.stored): Supervisor {
    const { id } = managed.stored;
    const install = () => installs.find((i) => i.version === current().spec.version);
    // A blue/green server before its cutover is none of the instance's servers (see greenView).
    const building = () => current() !== managed.stored;
    const isPrimary = () => primarySlot(current()) === slot;
    const replica = () => {
      if (!managed.stored.replica) throw new Error(`instance ${id} has no replica`);
      return managed.stored.replica;
    };
    const paths = () => (isPrimary() ? serverPaths(current()) : replicaPaths(managed.stored, replica().port));
    return supervise(building() ? `${id} (blue/green)` : slot === 'first' ? id : `${id} (second node)`, {
      async prepare() {
        if (isPrimary()) {
          const fault = faults.take('startServer', id);
          if (fault) throw new Error(fault.message);
        }
        const binaries = install();
        if (!binaries) throw new Error(`PostgreSQL ${managed.stored.spec.version} is not installed on this host`);
        const { spec, port } = current();
        const own = paths();
        await makePrivateDir(dirname(own.data), runAs);
        await makePrivateDir(own.log, runAs);
        await makePrivateDir(own.socket, runAs);
        await stopStalePostmaster(own.data);
        // Archiving settings on a standby too: archive_command takes effect when it is promoted.
        const archiving = building() ? greenBuildSettings : await serverSettings?.(id, spec.dataKey) ?? [];
        if (isPrimary()) {
          if (!(await exists(join(own.data, 'PG_VERSION')))) await initCluster(binaries, own, runAs);
          if (!building()) managed.applied[slot] = { version: spec.version, settings: spec.settings };
          await writeServerConfig(own, port, spec.settings, runAs, archiving);
        } else {
          if (!(await exists(join(own.data, 'PG_VERSION')))) throw new Error('the replica has no data; ensure it again');
          const settings = standbyServerSettings(spec.settings, managed.applied[primarySlot(managed.stored)]?.settings);
          managed.applied[slot] = { version: spec.version, settings };
          // It streams from the primary (the slot keeps what it lacks): with a restore_command its promotion would
          // first probe the archive, a process per timeline file, while clients wait at the gateway.
          const streaming = archiving.filter((line) => !line.startsWith('restore_command'));
          await writeServerConfig(own, replica().port, settings, runAs, [...streaming, ...standbySettings(port, replica().password)]);
          await writeStandbySignal(own.data, runAs);
        }
      },
      spawn: () => spawnPostmaster(install()!, paths(), runAs),
      async becomeReady(alive) {
        if (isPrimary()) return provision(current(), paths().socket, alive);
        const client = await connectWhenReady(paths().socket, replica().port, alive);
        await client.end().catch(() => undefined);
      },
    });
  }

  /** The gateway sends new connections to the server only once it runs (and is provisioned); meanwhile they wait. */
  function openGateway(managed: Managed): Promise<Gateway> {
    return createGateway({
      port: managed.stored.gatewayPort,
      target: () => (!managed.holding && managed.supervisor.state().status === 'running' ? { host, port: managed.stored.port } : undefined),
    });
  }

  /** New connections wait at the gateway from now on; those already sent on have been taken by the server (see Gateway.settled). */
  async function hold(managed: Managed): Promise<void> {
    managed.holding = true;
    await managed.gateway?.settled();
  }

  /** Stops managing an instance: no new connections, then the server stops. */
  async function release(managed: Managed): Promise<void> {
    instances.delete(managed.stored.id);
    await managed.gateway?.close();
    await managed.replica?.stop();
    await managed.blue?.stop();
    await managed.supervisor.stop();
  }

  /** Every port an instance owns (server and gateway), so a new one is never handed out twice. */
  const ownedPorts = (stored: SavedInstance) => [
    stored.port, ...(stored.gatewayPort === undefined ? [] : [stored.gatewayPort]), ...(stored.replica ? [stored.replica.port] : []),
    ...(stored.blueGreen && !stored.blueGreen.cutover ? [stored.blueGreen.port] : []),
    ...(stored.blueGreen?.blue ? [stored.blueGreen.blue.port] : []),
  ];
  const takenPorts = (extra: number[] = []) => new Set([...[...instances.values()].flatMap((m) => ownedPorts(m.stored)), ...extra]);

  function view({ stored, supervisor }: Managed): Instance {
    return {
      id: stored.id, engine: stored.spec.engine, version: stored.spec.version, host, port: stored.port, gatewayPort: stored.gatewayPort,
      ...supervisor.state(),
    };
  }

  /** The view with its nodes; the lag is left out when the primary cannot say (not running, replica not streaming). */
  async function viewWithNodes(managed: Managed): Promise<Instance> {
    const { stored, supervisor, replica } = managed;
    const nodes: InstanceNode[] = [{ role: 'primary', port: stored.port, status: supervisor.state().status }];
    if (stored.replica) {
      const status = managed.replicaRestartPending ? 'starting' : managed.replicaCopyFailed ? 'failed' : replica?.state().status ?? 'stopped';
      let lagBytes: number | undefined;
      if (supervisor.state().status === 'running') {
        const { socket } = serverPaths(stored);
        const client = new pg.Client({ host: socket, port: stored.port, user: adminRole, database: 'postgres', connectionTimeoutMillis: 2_000 });
        client.on('error', () => undefined);
        lagBytes = await client.connect().then(() => replicaLag(client)).catch(() => undefined);
        await client.end().catch(() => undefined);
      }
      nodes.push({ role: 'replica', port: stored.replica.port, status, ...(lagBytes === undefined ? {} : { lagBytes }) });
    }
    return { ...view(managed), nodes };
  }

  /** The primary, running: a replica is copied from it and its slot lives there. */
  async function runningPrimary(managed: Managed): Promise<pg.Client> {
    const state = await settled(managed, 60_000);
    if (state.status !== 'running') throw new Conflict(`instance ${managed.stored.id} is not running (${state.status}); its replica cannot be changed now`);
    return connectWhenReady(serverPaths(managed.stored).socket, managed.stored.port, () => managed.supervisor.state().status === 'running');
  }

  async function create(id: string, spec: EnsureInstance): Promise<Managed> {
    if (!installs.some((i) => i.version === spec.version)) {
      throw new Unprocessable(`PostgreSQL ${spec.version} is not installed on this host`);
    }
    const port = await allocatePort(takenPorts());
    const stored = { id, port, gatewayPort: await allocatePort(takenPorts([port])), spec };
    await makePrivateDir(instanceDir(id), runAs);
    const managed = manage(stored);
    // Listening before the state is saved: a port taken meanwhile fails this call (the caller retries), leaving no instance behind.
    managed.gateway = await openGateway(managed);
    await saveState(stored).catch(async (error: unknown) => {
      await managed.gateway?.close();
      throw error;
    });
    instances.set(id, managed);
    log('info', 'instance created', { instance: id, version: spec.version, port: stored.port, gatewayPort: stored.gatewayPort });
    return managed;
  }

  async function converge(managed: Managed, spec: EnsureInstance, restart: 'all' | 'replica'): Promise<void> {
    const current = managed.stored.spec;
    // Within a major the data directory is the same format: a minor upgrade (or its rollback) is a restart on other binaries.
    if (spec.engine !== current.engine || majorOf(spec.version) !== majorOf(current.version)) {
      throw new Conflict(`instance ${managed.stored.id} runs ${current.engine} ${current.version}; a major version change is not a restart`);
    }
    if (!installs.some((i) => i.version === spec.version)) throw new Unprocessable(`PostgreSQL ${spec.version} is not installed on this host`);
    // Turning archiving on or off needs a restart; a new data key version only changes what the agent seals new WAL with.
    const archivingChanged = !spec.dataKey !== !current.dataKey;
    const keyChanged = canonical(spec.dataKey ?? {}) !== canonical(current.dataKey ?? {});
    const accessChanged = canonical(spec.role) !== canonical(current.role) || spec.database !== current.database;
    // A server runs another version or other settings than the spec's: changed now, or left behind by a rolling change.
    const runsOther = (slot: Slot) => {
      const applied = managed.applied[slot];
      return applied !== undefined && (applied.version !== spec.version || canonical(applied.settings) !== canonical(spec.settings));
    };
    const stale = (slot: Slot) => archivingChanged || runsOther(slot);
    const primaryStale = restart === 'all' && stale(primarySlot(managed.stored));
    const replicaStale = managed.replica !== undefined && stale(replicaSlot(managed.stored));
    const specChanged = archivingChanged || keyChanged || accessChanged || spec.version !== current.version
      || spec.diskQuotaBytes !== current.diskQuotaBytes || canonical(spec.settings) !== canonical(current.settings);
    if (!specChanged && !primaryStale && !replicaStale) return;
    if (specChanged) {
      managed.stored = { ...managed.stored, spec };
      await saveState(managed.stored);
    }
    if (keyChanged && !archivingChanged) await serverSettings?.(managed.stored.id, spec.dataKey);
    const replicaApplied = managed.applied[replicaSlot(managed.stored)];
    const replicaAfterPrimary = primaryStale && replicaStale && replicaApplied !== undefined && lowersStandbyMinimums(replicaApplied.settings, spec.settings);
    if (replicaAfterPrimary) {
      managed.replicaRestartPending = true;
      void serialized(managed.stored.id, () => restartReplicaAfterPrimary(managed));
    } else if (replicaStale) {
      log('info', 'settings changed; restarting the replica', { instance: managed.stored.id });
      await managed.replica!.stop();
    }
    if (primaryStale) {
      log('info', 'settings changed; restarting the primary', { instance: managed.stored.id });
      await stopPrimaryHeld(managed);
    } else if (accessChanged) {
      managed.supervisor.reprovision();
    }
  }

  /**
   * Stops the primary to restart it (the caller starts it): new connections wait at the gateway rather than
   * reach a server that is shutting down, and its sessions get a moment to finish.
   */
  async function stopPrimaryHeld(managed: Managed): Promise<void> {
    // A shutdown first archives every WAL file still waiting (a process each: seconds after a bulk load), clients
    // held meanwhile: this waits for them before holding clients instead, up to archiveCatchUpMs.
    for (const deadline = Date.now() + archiveCatchUpMs; Date.now() < deadline && (await archiveBacklog(managed)) > 0;) await sleep(200);
    await checkpoint(managed);
    const heldSince = Date.now();
    try {
      await hold(managed);
      await managed.supervisor.stop({ smartMs: sessionGraceMs });
    } finally {
      managed.holding = false;
    }
    log('info', 'primary stopped', { instance: managed.stored.id, stopMs: Date.now() - heldSince });
    // It starts on the spec: the replica, starting beside it, must match that, not the old settings.
    managed.applied[primarySlot(managed.stored)] = undefined;
  }

  /**
   * An agent that died while swapping restored data in (replaceData) left the old data aside: the
   * restore did not finish (its job reads back as failed), so the old data goes back in place.
   */
  async function undoUnfinishedSwap(stored: StoredInstance): Promise<void> {
    const live = serverPaths(stored).data;
    for (const name of await readdir(dirname(live))) {
      const path = join(dirname(live), name);
      if (name.startsWith('data.discard-')) {
        await rm(path, { recursive: true, force: true });
      } else if (name.startsWith('data.before-')) {
        await stopStalePostmaster(live);
        await rm(live, { recursive: true, force: true });
        await rename(path, live);
        log('warn', 'put the data back that an interrupted restore had moved aside', { instance: stored.id, from: name });
      }
    }
  }

  /**
   * After the current call (a cutover or its rollback moved the primary): the replica is copied afresh from the new
   * primary. Until then it reads as `starting`; if the copy fails it reads as `failed`, which fails the operation's replica check.
   */
  function reseedReplicaLater(managed: Managed): void {
    if (!managed.stored.replica) return;
    const { id } = managed.stored;
    managed.replicaRestartPending = true;
    void serialized(id, () => seedReplica(managed))
      .catch((error: unknown) => {
        managed.replicaCopyFailed = true;
        log('error', 'the replica could not be copied from the new primary', { instance: id, error: errorMessage(error) });
      })
      .finally(() => { managed.replicaRestartPending = false; });
  }

  /**
   * Copies the running primary into the replica's folder (low-level backup API) and starts it streaming.
   * A port and password are saved before anything is made, so a retry after a crash midway reuses them.
   */
  async function seedReplica(managed: Managed): Promise<void> {
    if (!managed.stored.replica) {
      const port = await allocatePort(takenPorts());
      managed.stored = { ...managed.stored, replica: { port, password: randomBytes(24).toString('base64url') } };
      await saveState(managed.stored);
    }
    const { port, password } = managed.stored.replica!;
    const { data } = replicaPaths(managed.stored, port);
    const copy = `${data}.copy`;
    managed.replicaCopyFailed = false;
    log('info', 'copying the primary into a new replica', { instance: managed.stored.id, port });
    const client = await runningPrimary(managed);
    try {
      // Bounded: a copy that waits on a lock or a checkpoint this long fails, and says so, rather than hang the instance's queue.
      await client.query("SET statement_timeout = '10min'");
      await prepareReplication(client, serverPaths(managed.stored).data, password);
      await rm(copy, { recursive: true, force: true });
      await makePrivateDir(dirname(data), runAs);
      await makePrivateDir(copy, runAs);
      await copyPrimary(client, Number(managed.stored.spec.version.split('.')[0]), serverPaths(managed.stored).data, copy, runAs);
    } finally {
      await client.end().catch(() => undefined);
    }
    await stopStalePostmaster(data);
    await rm(data, { recursive: true, force: true });
    await rename(copy, data);
    managed.replica ??= superviseNode(managed, replicaSlot(managed.stored));
    managed.replica.start();
    log('info', 'replica created', { instance: managed.stored.id, port });
  }

  /** Until the replica runs and streams with less than `maxLagBytes` to replay; false at the deadline or once it failed. */
  async function replicaCaughtUp(managed: Managed, maxLagBytes: number, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && !managed.replicaCopyFailed && managed.replica?.state().status !== 'failed') {
      if (managed.replica?.state().status === 'running') {
        const lag = (await viewWithNodes(managed)).nodes?.find((n) => n.role === 'replica')?.lagBytes;
        if (lag !== undefined && lag <= maxLagBytes) return true;
      }
      await sleep(50);
    }
    return false;
  }

  /** Promotes the replica and waits until it is a primary. */
  async function promoteReplica(managed: Managed): Promise<void> {
    const { port } = managed.stored.replica!;
    const { socket } = replicaPaths(managed.stored, port);
    const client = await connectWhenReady(socket, port, () => managed.replica?.state().status === 'running');
    try {
      // pg_promote(true) would check every 100 ms; clients wait meanwhile, so this checks every 10 ms.
      await client.query('SELECT pg_promote(false)');
      const deadline = Date.now() + 30_000;
      while ((await client.query<{ recovering: boolean }>('SELECT pg_is_in_recovery() AS recovering')).rows[0]!.recovering) {
        if (Date.now() > deadline) throw new Error('the replica was not promoted within 30 s');
        await sleep(10);
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  async function restartReplicaAfterPrimary(managed: Managed): Promise<void> {
    try {
      const client = await runningPrimary(managed);
      try {
        await replicaReplayedNow(client, replicaRestartWaitMs);
      } finally {
        await client.end().catch(() => undefined);
      }
      log('info', 'settings changed; restarting the replica after the primary', { instance: managed.stored.id });
      await managed.replica?.stop();
      managed.replica?.start();
    } finally {
      managed.replicaRestartPending = false;
    }
  }

  /** WAL files the primary has not archived yet; 0 when it cannot say. */
  async function archiveBacklog(managed: Managed): Promise<number> {
    return withClient(endpoint(managed.stored), 'postgres', async (client) => (await client.query<{ ready: number }>(
      "SELECT count(*)::int AS ready FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")).rows[0]!.ready).catch(() => 0);
  }

  /** A checkpoint before a planned stop leaves the shutdown checkpoint little to write: time clients would wait. */
  async function checkpoint(managed: Managed): Promise<void> {
    const { socket } = serverPaths(managed.stored);
    const client = new pg.Client({ host: socket, port: managed.stored.port, user: adminRole, database: 'postgres', connectionTimeoutMillis: 2_000 });
    client.on('error', () => undefined);
    await client.connect().then(() => client.query('CHECKPOINT')).catch(() => undefined);
    await client.end().catch(() => undefined);
  }

  /** Whether the replica has left recovery: a promotion whose answer was lost may still have happened. */
  async function replicaPromoted(managed: Managed): Promise<boolean> {
    const { port } = managed.stored.replica!;
    const client = new pg.Client({ host: replicaPaths(managed.stored, port).socket, port, user: adminRole, database: 'postgres', connectionTimeoutMillis: 2_000 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      const { rows: [row] } = await client.query<{ recovering: boolean }>('SELECT pg_is_in_recovery() AS recovering');
      return row?.recovering === false;
    } catch {
      return false;
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /**
   * The old primary follows the new one: it shut down cleanly, so its WAL is a prefix of the new
   * primary's timeline, which it can stream. If it does not catch up in time it is copied afresh.
   */
  async function rejoinAsReplica(managed: Managed): Promise<void> {
    const client = await runningPrimary(managed);
    try {
      // The slot lived on the old primary: the new one needs its own before its replica connects.
      await prepareReplication(client, serverPaths(managed.stored).data, managed.stored.replica!.password);
    } finally {
      await client.end().catch(() => undefined);
    }
    managed.replica!.start();
    if (await replicaCaughtUp(managed, Number.MAX_SAFE_INTEGER, rejoinTimeoutMs)) return;
    // A copy can take long: it runs after this call answers, the replica reported starting meanwhile.
    log('warn', 'the old primary did not rejoin as a replica; copying it afresh', { instance: managed.stored.id });
    managed.replicaRestartPending = true;
    void serialized(managed.stored.id, async () => {
      try {
        await managed.replica?.stop();
        await seedReplica(managed);
      } finally {
        managed.replicaRestartPending = false;
      }
    });
  }

  /** The blue/green server runs beside the primary until the cutover makes it the primary (see greenView). */
  function startGreen(managed: Managed): Supervisor {
    const { folder } = managed.stored.blueGreen!;
    managed.green ??= superviseNode(managed, 'first', () => (managed.stored.folder === folder ? managed.stored : greenView(managed.stored)));
    managed.green.start();
    return managed.green;
  }

  /** The old server runs beside the new primary, following it, from the cutover until the upgrade is finished or rolled back. */
  function startBlue(managed: Managed): Supervisor {
    const { port } = managed.stored.blueGreen!.blue!;
    // Once rolled back it is the instance's own primary again: its next start reads the instance's state.
    managed.blue ??= superviseNode(managed, primarySlot(blueView(managed.stored)), () => (managed.stored.port === port ? managed.stored : blueView(managed.stored)));
    managed.blue.start();
    return managed.blue;
  }

  /** What a blue/green upgrade has come to: its progress read on both servers before the cutover, what the cutover checked after. */
  async function blueGreenView(managed: Managed): Promise<BlueGreen> {
    const { cutover, folder: _folder, blue: _blue, rolledBackAt, ...green } = managed.stored.blueGreen!;
    if (cutover) return { ...green, status: rolledBackAt ? 'rolled_back' : 'cut_over', databases: [], cutover };
    const state = managed.green?.state() ?? { status: 'stopped' };
    if (state.status === 'failed') return { ...green, status: 'failed', reason: `the new server failed: ${state.reason ?? 'no reason given'}`, databases: [] };
    if (state.status !== 'running' || managed.supervisor.state().status !== 'running') return { ...green, status: 'building', databases: [] };
    const databases = await replicationProgress(endpoint(managed.stored), endpoint(greenView(managed.stored)));
    const errors = databases.reduce((sum, d) => sum + d.errors, 0);
    managed.greenErrors ??= { baseline: errors, count: errors, grewAt: 0 };
    if (errors > managed.greenErrors.count) managed.greenErrors = { ...managed.greenErrors, count: errors, grewAt: Date.now() };
    if (errors - managed.greenErrors.baseline >= replicationErrorsFailing) {
      const failing = databases.filter((d) => d.errors > 0).map((d) => d.database);
      return { ...green, status: 'failed', reason: `replication keeps failing in ${failing.join(', ')} (DDL on the old server?); see the new server's log`, databases };
    }
    const quiet = Date.now() - managed.greenErrors.grewAt >= replicationQuietMs;
    const ready = quiet && databases.every((d) => d.initialCopyDone && d.lagBytes !== undefined && d.lagBytes <= cutoverMaxLagBytes);
    return { ...green, status: ready ? 'ready' : 'building', databases };
  }

  /** Server folders of earlier majors whose rollback period is over. */
  async function removeExpired(managed: Managed): Promise<void> {
    const now = new Date().toISOString();
    const expired = (managed.stored.retired ?? []).filter((r) => r.removeAfter <= now);
    if (expired.length === 0) return;
    managed.stored = { ...managed.stored, retired: managed.stored.retired!.filter((r) => r.removeAfter > now) };
    await saveState(managed.stored);
    for (const path of expired.flatMap((r) => r.paths)) await rm(join(instanceDir(managed.stored.id), path), { recursive: true, force: true });
    log('info', 'removed the server folders of an earlier major', { instance: managed.stored.id, versions: expired.map((r) => r.version) });
  }

  /** Every user table's row count on both servers, read at once; what differs. `from` is the server clients leave. */
  async function compareTables(from: AdminEndpoint, to: AdminEndpoint): Promise<{ tables: TableStats; differences: string[] }> {
    const [left, joined] = await Promise.all([rowCounts(from), rowCounts(to)]);
    const key = (t: TableStats['tables'][number]) => `${t.database}: ${t.schema}.${t.name}`;
    const onJoined = new Map(joined.tables.map((t) => [key(t), t.rows]));
    const differences = left.tables.filter((t) => onJoined.get(key(t)) !== t.rows)
      .map((t) => `${key(t)} has ${t.rows} rows on the server clients leave, ${onJoined.get(key(t)) ?? 'no table'} on the one they go to`);
    const extra = joined.tables.filter((t) => !left.tables.some((b) => key(b) === key(t))).map((t) => `${key(t)} is only on the server clients go to`);
    return { tables: left, differences: [...differences, ...extra] };
  }

  /**
   * Clients move between a major upgrade's two servers, new connections held: the server they leave (`from`) ends its
   * sessions and has its tables fenced, `to` applies all it wrote and takes its sequences, every table's row count is
   * compared (a difference, or one in `differences`, is a 409 naming `refusal`), then `complete` finishes the move
   * and saves the state it returns. Any failure releases clients back to `from`, which kept running. Else clients are
   * still held when this returns, and the fence holds until the caller calls `unfence` (once `from` stops).
   */
  async function moveHeld(managed: Managed, from: AdminEndpoint, to: AdminEndpoint, { what, refusal, differences: added = [], complete }: {
    what: string; refusal: string; differences?: string[];
    complete: (checked: { tables: TableStats; sequences: number; heldSince: number; lap: (phase: string) => void }) => Promise<StoredInstance>;
  }): Promise<{ stored: StoredInstance; unfence: () => Promise<void>; heldSince: number; phasesMs: Record<string, number> }> {
    const heldSince = Date.now();
    // Where the time clients wait goes, for the log.
    const phasesMs: Record<string, number> = {};
    let lapAt = heldSince;
    const lap = (phase: string) => { phasesMs[phase] = Date.now() - lapAt; lapAt = Date.now(); };
    let unfence = async () => {};
    try {
      await hold(managed);
      await endSourceSessions(from, { graceMs: sessionGraceMs });
      unfence = await fenceSource(from);
      // Any that logged in meanwhile cannot commit any more: it may finish what it did before, and leave.
      await endSourceSessions(from, { graceMs: sessionGraceMs });
      lap('sessions');
      await drain(from, to, cutoverDrainMs);
      lap('drain');
      const sequences = await syncSequences(from, to);
      lap('sequences');
      const { tables, differences } = await compareTables(from, to);
      lap('compare');
      differences.push(...added);
      if (differences.length > 0) throw new Conflict(`${refusal}: ${differences.join('; ')}`);
      const stored = await complete({ tables, sequences, heldSince, lap });
      // Saved before any client reaches the other server: an agent that dies from now on comes back with it as the primary.
      await saveState(stored);
      lap('save');
      return { stored, unfence, heldSince, phasesMs };
    } catch (error) {
      await unfence();
      managed.holding = false;
      log('warn', `blue/green: ${what} abandoned; clients stay where they were`, { instance: managed.stored.id, heldMs: Date.now() - heldSince, error: errorMessage(error) });
      throw error;
    }
  }

  /** The primary a major upgrade moves clients to archives into the database's archive from now on (archive_mode was on). */
  async function archiveFrom(server: AdminEndpoint, paths: ServerPaths, stored: StoredInstance): Promise<void> {
    await writeServerConfig(paths, server.port, stored.spec.settings, runAs, await serverSettings?.(stored.id, stored.spec.dataKey) ?? []);
    await withClient(server, 'postgres', (client) => client.query('SELECT pg_reload_conf()'));
  }

  /** Waits until a (re)started server is running, or has failed. */
  async function settled(managed: Managed, timeoutMs = 120_000, supervisor = managed.supervisor): Promise<{ status: string; reason?: string }> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<{ status: string; reason: string }>((resolve) => {
      timer = setTimeout(() => resolve({ status: 'failed', reason: `not ready within ${timeoutMs / 1000} s` }), timeoutMs);
    });
    try {
      return await Promise.race([supervisor.whenSettled(), timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  return {
    ensure: (id, spec, { restart = 'all' } = {}) => serialized(id, async () => {
      const fault = faults.take('ensureInstance', id);
      if (fault) throw new InjectedFault(fault.message);
      checkSpec(spec);
      const existing = instances.get(id);
      if (existing) await converge(existing, spec, restart);
      const managed = existing ?? await create(id, spec);
      // Starts a new or restarted server; retries a failed one; leaves a running one alone.
      managed.supervisor.start();
      managed.replica?.start();
      return view(managed);
    }),

    get: async (id, replicaWaitMs = 0) => {
      const managed = instances.get(id);
      if (managed?.stored.replica && replicaWaitMs > 0) await replicaCaughtUp(managed, 0, replicaWaitMs);
      return managed && viewWithNodes(managed);
    },

    ensureReplica: (id) => serialized(id, async () => {
      const managed = instances.get(id);
      if (!managed) throw new NotFound(`no instance ${id} on this host`);
      if (managed.replica) {
        // Retries a failed replica; leaves a running one alone.
        managed.replica.start();
        return viewWithNodes(managed);
      }
      await seedReplica(managed);
      return viewWithNodes(managed);
    }),

    switchover: (id, switchoverId) => serialized(id, async () => {
      const managed = instances.get(id);
      if (!managed) throw new NotFound(`no instance ${id} on this host`);
      if (managed.stored.lastSwitchover === switchoverId) return viewWithNodes(managed);
      if (!managed.replica) throw new Conflict(`instance ${id} has no replica to switch over to`);
      // Holding clients is only short if the replica has little left to replay.
      if (!(await replicaCaughtUp(managed, switchoverMaxLagBytes, switchoverCatchUpMs))) {
        throw new Conflict(`the replica of ${id} is not streaming with less than ${switchoverMaxLagBytes} bytes to replay`);
      }
      const fault = faults.take('switchover', id);
      if (fault) throw new InjectedFault(fault.message);
      await checkpoint(managed);
      const heldSince = Date.now();
      let stoppedMs = 0;
      try {
        await hold(managed);
        // A clean shutdown sends every WAL record to the streaming replica before the server exits, so
        // the promotion below replays every acknowledged commit.
        await managed.supervisor.stop({ smartMs: sessionGraceMs });
        stoppedMs = Date.now() - heldSince;
        await promoteReplica(managed);
      } catch (error) {
        if (!(await replicaPromoted(managed))) {
          managed.holding = false;
          managed.supervisor.start();
          throw error;
        }
      }
      const { port, replica } = managed.stored;
      managed.stored = { ...managed.stored, port: replica!.port, replica: { ...replica!, port }, swapped: !managed.stored.swapped, lastSwitchover: switchoverId };
      [managed.supervisor, managed.replica] = [managed.replica, managed.supervisor];
      // Saved before any client reaches the new primary: an agent that dies now comes back with it as the primary.
      await saveState(managed.stored).finally(() => { managed.holding = false; });
      log('info', 'switched over', { instance: id, primaryPort: managed.stored.port, stoppedMs, heldMs: Date.now() - heldSince });
      await rejoinAsReplica(managed);
      return viewWithNodes(managed);
    }),

    startBlueGreen: (id, { id: blueGreenId, version }) => serialized(id, async () => {
      const managed = instances.get(id);
      if (!managed) throw new NotFound(`no instance ${id} on this host`);
      const existing = managed.stored.blueGreen;
      if (existing?.id === blueGreenId && existing.cutover) return blueGreenView(managed);
      if (existing && (!existing.cutover || existing.blue) && existing.id !== blueGreenId) throw new Conflict(`instance ${id} is already being upgraded (${existing.id})`);
      if (!existing || existing.cutover) {
        const current = managed.stored.spec.version;
        if (!installs.some((i) => i.version === version)) throw new Unprocessable(`PostgreSQL ${version} is not installed on this host`);
        if (majorOf(version) <= majorOf(current)) throw new Unprocessable(`${version} is not a later major than ${current}: a blue/green upgrade goes to a later major`);
      }
      const state = await settled(managed, 60_000);
      if (state.status !== 'running') throw new Conflict(`instance ${id} is not running (${state.status})`);
      await removeExpired(managed);

      const blue = endpoint(managed.stored);
      if ((await prepareSource(blue)).restartNeeded) {
        log('info', 'blue/green: restarting the primary for wal_level = logical', { instance: id });
        await stopPrimaryHeld(managed);
        managed.supervisor.start();
        const restarted = await settled(managed, 60_000);
        if (restarted.status !== 'running') throw new Conflict(`instance ${id} did not come back for its upgrade: ${restarted.reason ?? restarted.status}`);
      }
      if (!existing || existing.cutover) {
        // Saved before the server is made: a retry after a crash midway finds its port and folder.
        const port = await allocatePort(takenPorts());
        managed.stored = { ...managed.stored, blueGreen: { id: blueGreenId, fromVersion: managed.stored.spec.version, version, port, folder: `green-${blueGreenId}` } };
        await saveState(managed.stored);
      }
      const green = startGreen(managed);
      for (const deadline = Date.now() + 60_000; green.state().status !== 'running'; await sleep(50)) {
        const { status, reason } = green.state();
        if (status === 'failed' || Date.now() > deadline) throw new Conflict(`the new server of ${id} did not start: ${reason ?? 'not within 60 s'}`);
      }
      const target = endpoint(greenView(managed.stored));
      const switched = await advanceWalPast(blue, target);
      await copySchema(blue, target, runAs);
      await subscribe(blue, target);
      log('info', 'blue/green: subscribed', { instance: id, version, port: target.port, walFilesSwitched: switched });
      return blueGreenView(managed);
    }),

    getBlueGreen: async (id, blueGreenId, waitMs = 0) => {
      const deadline = Date.now() + waitMs;
      for (;;) {
        const managed = instances.get(id);
        const progress = managed?.stored.blueGreen?.id === blueGreenId ? await blueGreenView(managed) : undefined;
        if (progress?.status !== 'building' || Date.now() >= deadline) return progress;
        await sleep(200);
      }
    },

    cutover: (id, blueGreenId) => serialized(id, async () => {
      const managed = instances.get(id);
      const green = managed?.stored.blueGreen;
      if (!managed || green?.id !== blueGreenId) throw new NotFound(`no blue/green upgrade ${blueGreenId} of ${id} on this host`);
      if (green.cutover) return blueGreenView(managed);
      const progress = await blueGreenView(managed);
      if (progress.status !== 'ready') throw new Conflict(`the new server of ${id} is not ready for the cutover (${progress.status}${progress.reason ? `: ${progress.reason}` : ''})`);
      const fault = faults.take('cutover', id);
      const blue = endpoint(managed.stored);
      const target = endpoint(greenView(managed.stored));
      // Before clients are held: the row counts below then read indexes, not whole tables, and the new server has its statistics.
      await Promise.all([vacuum(blue), vacuum(target, { analyze: true })]);
      // Less for the shutdown below to write.
      await checkpoint(managed);
      // The reverse subscriptions' publications: nothing reads them until the cutover makes its slots.
      await prepareSource(target);
      // Clients are held only for what is left to apply once the subscriptions have caught up with the writes so far.
      await drain(blue, target, cutoverDrainMs).catch((error: unknown) => {
        throw new Conflict(`the new server of ${id} does not catch up with the old one: ${errorMessage(error)}`);
      });
      const { stored: upgraded, unfence, heldSince, phasesMs } = await moveHeld(managed, blue, target, {
        what: 'cutover',
        refusal: `the new server's rows differ from the old one's, the database stays on ${green.fromVersion}`,
        differences: fault ? [fault.message] : [],
        async complete({ tables, sequences, heldSince: since, lap }) {
          await advanceWalPast(blue, target);
          await finishTarget(target);
          // The old server follows the new one until the upgrade is finished: a rollback then takes back every write made
          // meanwhile. Nothing is written on the new server before clients are released: its slots start where the old one is.
          await subscribe(target, blue, { copyData: false });
          lap('reverse');
          await archiveFrom(target, serverPaths(greenView(managed.stored)), managed.stored);
          lap('finish');
          const { swapped, ...blueStored } = managed.stored;
          const removeAfter = new Date(Date.now() + retiredKeepDays * 86_400_000).toISOString();
          const cutover: Cutover = { at: new Date().toISOString(), heldMs: Date.now() - since, tables, sequences };
          return {
            ...blueStored, folder: green.folder, port: green.port, spec: { ...managed.stored.spec, version: green.version },
            blueGreen: { ...green, cutover, blue: { port: blue.port, ...(managed.stored.folder ? { folder: managed.stored.folder } : {}), ...(swapped ? { swapped } : {}) } },
            retired: [...(managed.stored.retired ?? []), { version: green.fromVersion, paths: serverFolders(managed.stored), removeAfter }],
          };
        },
      });
      // Stopping starts a new generation at once (no restart of the old servers after this line: they would read the
      // state below and start in the new folder); they shut down while clients already work on the new server. The
      // fence holds until then: it ends with the old server, which starts again beside the new one (startBlue), its
      // subscriptions applying, no client reaching it.
      const stopped = Promise.all([managed.supervisor.stop(), managed.replica?.stop()]).finally(unfence);
      managed.stored = upgraded;
      managed.supervisor = managed.green!;
      managed.green = undefined;
      managed.greenErrors = undefined;
      managed.replica = undefined;
      managed.applied = { first: { version: green.version, settings: managed.stored.spec.settings } };
      managed.holding = false;
      log('info', 'blue/green: cut over', { instance: id, from: green.fromVersion, to: green.version, heldMs: Date.now() - heldSince, phasesMs });
      await stopped;
      startBlue(managed);
      // The replica streamed from the old server: it is copied afresh from the new one, after this call answers.
      reseedReplicaLater(managed);
      return blueGreenView(managed);
    }),

    abandonBlueGreen: (id, blueGreenId) => serialized(id, async () => {
      const managed = instances.get(id);
      const green = managed?.stored.blueGreen;
      if (!managed || green?.id !== blueGreenId) return;
      if (green.cutover) throw new Conflict(`instance ${id} was cut over to ${green.version} by ${blueGreenId}: there is nothing to abandon`);
      await managed.green?.stop();
      managed.green = undefined;
      managed.greenErrors = undefined;
      const folder = join(instanceDir(id), green.folder);
      await stopStalePostmaster(join(folder, 'data'));
      // The subscriptions' slots are inactive once the new server is gone.
      if ((await settled(managed, 60_000)).status === 'running') await cleanupSource(endpoint(managed.stored));
      await rm(folder, { recursive: true, force: true });
      await rm(join(socketsDir, String(green.port)), { recursive: true, force: true });
      const { blueGreen: _gone, ...rest } = managed.stored;
      managed.stored = rest;
      await saveState(managed.stored);
      log('info', 'blue/green: abandoned', { instance: id, version: green.version });
    }),

    finishBlueGreen: (id, blueGreenId) => serialized(id, async () => {
      const managed = instances.get(id);
      const upgrade = managed?.stored.blueGreen;
      if (!managed || upgrade?.id !== blueGreenId) throw new NotFound(`no blue/green upgrade ${blueGreenId} of ${id} on this host`);
      if (!upgrade.cutover || upgrade.rolledBackAt) throw new Conflict(`instance ${id} was not cut over to ${upgrade.version} by ${blueGreenId}: there is nothing to finish`);
      if (!upgrade.blue) return blueGreenView(managed);
      const blue = { port: upgrade.blue.port, paths: serverPaths(blueView(managed.stored)) };
      if ((await settled(managed, 60_000, startBlue(managed))).status === 'running') {
        await finishTarget(blue);
        // The slots and publication the upgrade's subscriptions used, left detached by the cutover.
        await cleanupSource(blue);
      }
      await cleanupSource(endpoint(managed.stored));
      await managed.blue?.stop();
      managed.blue = undefined;
      const { blue: _gone, ...finished } = upgrade;
      managed.stored = { ...managed.stored, blueGreen: finished };
      await saveState(managed.stored);
      log('info', 'blue/green: finished; the old server stopped', { instance: id, version: upgrade.fromVersion });
      return blueGreenView(managed);
    }),

    rollBackBlueGreen: (id, blueGreenId) => serialized(id, async () => {
      const managed = instances.get(id);
      const upgrade = managed?.stored.blueGreen;
      if (!managed || upgrade?.id !== blueGreenId) throw new NotFound(`no blue/green upgrade ${blueGreenId} of ${id} on this host`);
      if (upgrade.rolledBackAt) return blueGreenView(managed);
      if (!upgrade.cutover) throw new Conflict(`instance ${id} was not cut over to ${upgrade.version} by ${blueGreenId}: abandon it instead`);
      if (!upgrade.blue) throw new Conflict(`the upgrade ${blueGreenId} of ${id} is finished: its old server no longer follows the new one`);
      const oldStored = blueView(managed.stored);
      const blue = { port: oldStored.port, paths: serverPaths(oldStored) };
      const green = endpoint(managed.stored);
      const state = await settled(managed, 60_000, startBlue(managed));
      if (state.status !== 'running') throw new Conflict(`the old server of ${id} is not running (${state.status}): it cannot take the database back`);
      // Before clients are held, as at the cutover: they then wait only for what is left.
      await drain(green, blue, cutoverDrainMs).catch((error: unknown) => {
        throw new Conflict(`the old server of ${id} does not catch up with the new one: ${errorMessage(error)}`);
      });
      await advanceWalPast(green, blue);
      const { stored: rolledBack, unfence, heldSince, phasesMs } = await moveHeld(managed, green, blue, {
        what: 'rollback',
        refusal: `the old server's rows differ from the new one's, the database stays on ${upgrade.version}`,
        async complete() {
          await finishTarget(blue);
          // The new server archived since the cutover, past the old one's position then: the old one's WAL file names must come after its.
          await advanceWalPast(green, blue);
          await archiveFrom(blue, serverPaths(oldStored), managed.stored);
          const { blue: _blue, ...record } = upgrade;
          const { blueGreen: _blueGreen, ...restored } = oldStored;
          const oldFolders = serverFolders(oldStored).join();
          return {
            ...restored, ...(managed.stored.replica ? { replica: managed.stored.replica } : {}),
            blueGreen: { ...record, rolledBackAt: new Date().toISOString() },
            retired: (managed.stored.retired ?? []).filter((r) => r.paths.join() !== oldFolders),
          };
        },
      });
      // The fence ends with the new server, which clients no longer reach.
      const stopped = Promise.all([managed.supervisor.stop(), managed.replica?.stop()]).finally(unfence);
      managed.stored = rolledBack;
      managed.supervisor = managed.blue!;
      managed.blue = undefined;
      managed.replica = undefined;
      managed.applied = { [primarySlot(rolledBack)]: { version: upgrade.fromVersion, settings: rolledBack.spec.settings } };
      managed.holding = false;
      log('info', 'blue/green: rolled back', { instance: id, from: upgrade.version, to: upgrade.fromVersion, heldMs: Date.now() - heldSince, phasesMs });
      await stopped;
      await rm(join(instanceDir(id), upgrade.folder), { recursive: true, force: true });
      await rm(join(socketsDir, String(upgrade.port)), { recursive: true, force: true });
      // The slots and publication the upgrade's subscriptions used, left detached by the cutover.
      await cleanupSource(blue);
      // The replica was copied from the new server after the cutover: it is copied afresh from the old one, after this call answers.
      reseedReplicaLater(managed);
      return blueGreenView(managed);
    }),

    removeReplica: (id) => serialized(id, async () => {
      const managed = instances.get(id);
      if (!managed?.stored.replica) return;
      const { port } = managed.stored.replica;
      await managed.replica?.stop();
      const client = await runningPrimary(managed);
      try {
        await dropReplication(client);
      } finally {
        await client.end().catch(() => undefined);
      }
      const { data, log: logDir, socket } = replicaPaths(managed.stored, port);
      const { replica: _gone, ...rest } = managed.stored;
      managed.stored = rest;
      managed.replica = undefined;
      await saveState(managed.stored);
      // Its own folder, or after an odd number of switchovers the first folder's data and log (the primary's folder holds the rest).
      const files = dirname(data) === baseDir(managed.stored) ? [data, logDir] : [dirname(data)];
      for (const path of [...files, socket]) await rm(path, { recursive: true, force: true });
      log('info', 'replica removed', { instance: id });
    }),

    remove: (id) => serialized(id, async () => {
      const fault = faults.take('deleteInstance', id);
      if (fault) throw new InjectedFault(fault.message);
      const managed = instances.get(id);
      if (managed) {
        await release(managed);
        await rm(serverPaths(managed.stored).socket, { recursive: true, force: true });
        if (managed.stored.replica) await rm(join(socketsDir, String(managed.stored.replica.port)), { recursive: true, force: true });
      }
      await rm(instanceDir(id), { recursive: true, force: true });
      log('info', 'instance deleted', { instance: id });
    }),

    async resumeAll() {
      // A root agent's servers run as another user, who must be able to pass through to their own folders.
      for (const dir of [dataDir, instancesDir, socketsDir]) {
        await mkdir(dir, { recursive: true });
        if (runAs) await chmod(dir, 0o711);
      }
      const saved = [];
      for (const id of await readdir(instancesDir)) {
        const stored = await readFile(join(instanceDir(id), 'state.json'), 'utf8')
          .then((text) => SavedInstance.parse(JSON.parse(text)))
          .catch((error: unknown) => log('error', 'ignoring an instance folder without a valid state.json', { instance: id, error: errorMessage(error) }));
        if (stored && stored.id === id) saved.push(stored);
      }
      // Every port already owned is known before an instance from an older agent gets its gateway port.
      const owned = saved.flatMap(ownedPorts);
      for (const { gatewayPort, ...rest } of saved) {
        const stored = { ...rest, gatewayPort: gatewayPort ?? await allocatePort(new Set(owned)) };
        if (gatewayPort === undefined) {
          owned.push(stored.gatewayPort);
          await saveState(stored);
          log('info', 'instance given a gateway port', { instance: stored.id, gatewayPort: stored.gatewayPort });
        }
        await undoUnfinishedSwap(stored);
        const managed = manage(stored);
        managed.gateway = await openGateway(managed).catch((error: unknown) => {
          log('error', 'the gateway could not listen; clients cannot reach this instance', { instance: stored.id, gatewayPort: stored.gatewayPort, error: errorMessage(error) });
          return undefined;
        });
        instances.set(stored.id, managed);
        managed.supervisor.start();
        if (stored.replica && await exists(join(replicaPaths(stored, stored.replica.port).data, 'PG_VERSION'))) {
          managed.replica = superviseNode(managed, replicaSlot(stored));
          managed.replica.start();
        }
        // A blue/green upgrade under way goes on: its subscriptions catch up with what they missed.
        if (stored.blueGreen && !stored.blueGreen.cutover) startGreen(managed);
        if (stored.blueGreen?.blue) startBlue(managed);
        await removeExpired(managed);
      }
    },

    describe: (id): HostedInstance | undefined => {
      const managed = instances.get(id);
      if (!managed) return undefined;
      return { spec: managed.stored.spec, port: managed.stored.port, paths: serverPaths(managed.stored), status: managed.supervisor.state().status };
    },

    replaceData: (id, data, tag) => serialized(id, async () => {
      const managed = instances.get(id);
      if (!managed) throw new Error(`no instance ${id} on this host`);
      const live = serverPaths(managed.stored).data;
      const aside = `${live}.before-${tag}`;
      await managed.supervisor.stop();
      await rm(aside, { recursive: true, force: true });
      await rename(live, aside);
      await rename(data, live);
      managed.supervisor.start();
      const state = await settled(managed);
      if (state.status === 'running') {
        log('info', 'instance data replaced', { instance: id, restore: tag });
        // Renamed first (atomic): a half-removed folder must never look like data to put back (see resumeAll).
        await rename(aside, `${live}.discard-${tag}`);
        await rm(`${live}.discard-${tag}`, { recursive: true, force: true });
        // The replica streamed from the data that was replaced: it is copied afresh.
        if (managed.replica) {
          await managed.replica.stop();
          await seedReplica(managed);
        }
        return;
      }
      // The old data comes back: a failed restore leaves the instance as it was.
      log('error', 'restored data did not start; putting the old data back', { instance: id, reason: state.reason });
      await managed.supervisor.stop();
      await rm(live, { recursive: true, force: true });
      await rename(aside, live);
      managed.supervisor.start();
      throw new Error(`the restored server did not start: ${state.reason ?? state.status}`);
    }),

    adopt: (id, spec, data) => serialized(id, async () => {
      checkSpec(spec);
      if (instances.has(id)) throw new Conflict(`instance ${id} already exists`);
      await makePrivateDir(instanceDir(id), runAs);
      await rename(data, join(instanceDir(id), 'data'));
      const managed = await create(id, spec);
      managed.supervisor.start();
      const state = await settled(managed, adoptTimeoutMs);
      if (state.status === 'running') return;
      await release(managed);
      await rm(instanceDir(id), { recursive: true, force: true });
      throw new Error(`the restored server did not start: ${state.reason ?? state.status}`);
    }),

    async removeExpiredFolders() {
      await Promise.all([...instances.values()].map((managed) => serialized(managed.stored.id, () => removeExpired(managed)).catch((error: unknown) =>
        log('error', 'could not remove the server folders of an earlier major', { instance: managed.stored.id, error: errorMessage(error) }))));
    },

    async stopAll() {
      await Promise.all([...instances.values()].map(async (m) => {
        await m.gateway?.close();
        await m.replica?.stop();
        await m.blue?.stop();
        await m.supervisor.stop();
      }));
    },
  };
}

/** The agent's own policy on top of the contract's schema: names it reserves and settings it cannot write. */
function checkSpec(spec: EnsureInstance): void {
  const issues: FieldIssue[] = [];
  if (spec.role.name === adminRole || spec.role.name.startsWith('pg_')) issues.push({ pointer: '/role/name', detail: 'this role name is reserved' });
  if (reservedDatabases.has(spec.database)) issues.push({ pointer: '/database', detail: 'this database name is reserved' });
  for (const [name, detail] of Object.entries(settingsProblems(spec.settings))) issues.push({ pointer: `/settings/${name}`, detail });
  if (issues.length > 0) throw new BadRequest('the instance spec is not valid', { errors: issues });
}

/** Connects as the admin over the instance's socket once the server accepts connections, then grants the customer access. */
async function provision(stored: StoredInstance, socketDir: string, current: () => boolean): Promise<void> {
  const client = await connectWhenReady(socketDir, stored.port, current);
  try {
    const { role, database } = stored.spec;
    const roleName = client.escapeIdentifier(role.name);
    const databaseName = client.escapeIdentifier(database);
    const roleExists = (await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role.name])).rowCount;
    // Given a verifier, PostgreSQL stores it as is: the clear password never reaches this host.
    await client.query(`${roleExists ? 'ALTER' : 'CREATE'} ROLE ${roleName} LOGIN PASSWORD ${client.escapeLiteral(role.scramVerifier)}`);
    const databaseExists = (await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database])).rowCount;
    await client.query(databaseExists ? `ALTER DATABASE ${databaseName} OWNER TO ${roleName}` : `CREATE DATABASE ${databaseName} OWNER ${roleName}`);
    await client.query(`REVOKE CONNECT ON DATABASE ${databaseName} FROM PUBLIC`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function connectWhenReady(socketDir: string, port: number, current: () => boolean): Promise<pg.Client> {
  while (current()) {
    const client = new pg.Client({ host: socketDir, port, user: adminRole, database: 'postgres', connectionTimeoutMillis: 2_000 });
    // A server that dies under an open connection emits 'error'; unhandled, it would take the agent down.
    client.on('error', () => undefined);
    try {
      await client.connect();
      return client;
    } catch {
      await client.end().catch(() => undefined);
      // Clients wait at the gateway until the server is ready: every 100 ms here would be up to 100 ms more for them.
      await sleep(20);
    }
  }
  throw new Error('the server stopped before it accepted connections');
}

/** A port nothing listens on now and no other instance owns; kept for the instance's lifetime. */
async function allocatePort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const probe = createServer().once('error', reject).listen(0, host, () => {
        const { port } = probe.address() as { port: number };
        probe.close(() => resolve(port));
      });
    });
    if (!taken.has(port)) return port;
  }
}

function canonical(value: object): string {
  return JSON.stringify(Object.entries(value).sort(([a], [b]) => a.localeCompare(b)));
}

function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}
