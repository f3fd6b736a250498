import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { chown, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { constants as zlib, createZstdCompress, createZstdDecompress, zstdCompressSync } from 'node:zlib';
import pg from 'pg';
import { z } from 'zod';
import {
  BackupJob, downloadSignature, RestoreJob, WrappedKey,
  type ArchiveSummary, type EnsureInstance, type Instance, type StartBackup, type StartRestore,
} from '#core/agent-api.ts';
import { majorOf } from '#core/catalog.ts';
import { BadRequest, Conflict, Forbidden, NotFound, Unprocessable } from '#core/errors.ts';
import type { Faults } from '../faults.ts';
import { onPath, pgDumpFor, type PostgresInstall } from '../host.ts';
import { errorMessage, log } from '../log.ts';
import {
  adminRole, makePrivateDir, quoteSetting, spawnPostmaster, stopStalePostmaster, writeServerConfig, type RunAs, type ServerPaths,
} from '../postgres.ts';
import { Arrivals } from './arrivals.ts';
import { createDecryptor, createEncryptor, decryptFile } from './crypto.ts';
import type { KeyRing } from './keyring.ts';
import { ObjectStore, type PutResult, type Verify } from './store.ts';
import { TarJoiner, tarEntry, tarTrailer } from './tar.ts';

/** What the backup service needs to know of, and do to, the instances on this host. */
export interface HostedInstance {
  spec: EnsureInstance;
  port: number;
  paths: ServerPaths;
  status: Instance['status'];
}

export interface InstanceAccess {
  describe(id: string): HostedInstance | undefined;
  /** Stops the server, swaps `data` in, starts it; puts the old data back (and throws) if it does not become ready. */
  replaceData(id: string, data: string, tag: string): Promise<void>;
  /**
   * Creates instance `id` from `spec` around an existing data directory; removes it again (and throws) if it does not
   * become ready. Its first start may recover the data (a base backup's WAL replayed): it is given 10 minutes.
   */
  adopt(id: string, spec: EnsureInstance, data: string): Promise<void>;
}

export interface BackupServiceOptions {
  dataDir: string;
  /** The local stand-in for S3: one folder per zone under it. */
  backupDir: string;
  secret: string;
  runAs: RunAs | undefined;
  installs: PostgresInstall[];
  faults: Faults;
  keys: KeyRing;
  instances: () => InstanceAccess;
  /** The pg_dump that can dump a server of a major, if this host has one; default: Debian's (host.ts). */
  pgDump?: (major: number) => string | undefined;
}

/** The per-database token the server's archive_command and restore_command present to the agent. */
export function walToken(secret: string, databaseId: string): string {
  return createHmac('sha256', `dbplane-wal:${secret}`).update(databaseId).digest('base64url');
}

/** What a download streams: the base backup's tar, or the pg_dump taken with it. */
export const DownloadFormat = z.enum(['base', 'dump']);
export type DownloadFormat = z.infer<typeof DownloadFormat>;

/** What `<zone>/<databaseId>/base/<backupId>.json` holds next to the encrypted archive. */
const BackupMeta = z.object({
  job: BackupJob,
  kind: z.string(),
  /** The server version that wrote it ("major.minor"): a restore needs the same major. */
  version: z.string(),
  /** The data key it is sealed with, wrapped by the master key (envelope encryption): downloads and restores outlive the instance. */
  wrappedKey: WrappedKey,
  /**
   * The WAL segment the backup starts in (backup_label's START WAL LOCATION): no restore of it needs
   * WAL before. Recorded once the backup completes; absent on backups older than this field.
   */
  startWal: z.string().regex(/^[0-9A-F]{24}$/).optional(),
  /** Sealed with its object name bound to every chunk (crypto.ts, format 2): restores trust the tags, no SHA-256 pass. Absent on older backups. */
  nameBound: z.boolean().optional(),
});
type BackupMeta = z.infer<typeof BackupMeta>;

const WalMeta = z.object({ sha256: z.string(), sizeBytes: z.number(), keyVersion: z.number(), archivedAt: z.string() });

const StoredRestore = z.object({ job: RestoreJob });

const walName = /^[0-9A-Za-z._-]{1,64}$/;
const walSegment = /^[0-9A-F]{24}$/;
const walHistory = /^[0-9A-F]{8}\.history$/;
const walSegmentBytes = 16 * 1024 * 1024;
/** Folders whose contents a base backup leaves out (as pg_basebackup does): recreated empty by the restore. */
const emptiedDirs = ['pg_wal', 'pg_replslot', 'pg_dynshmem', 'pg_notify', 'pg_serial', 'pg_snapshots', 'pg_stat_tmp', 'pg_subtrans'];
const recoveryTimeoutMs = 10 * 60_000;
/** How long a backup waits for the last WAL file it needs to be archived before it fails. */
const walArchiveTimeoutMs = 10 * 60_000;

const baseKey = (db: string, backupId: string) => `${db}/base/${backupId}.tar.zst.enc`;
/** zstd level 1: ~5× the speed of gzip -1 here with a better ratio (bench/RESULTS.md); it runs off the main thread. */
const zstdLevel1 = { params: { [zlib.ZSTD_c_compressionLevel]: 1 } };
const compress = () => createZstdCompress(zstdLevel1);
/** In 1 MiB pieces, not zlib's 16 KiB: far fewer trips through the thread pool and the streams. */
const decompress = () => createZstdDecompress({ chunkSize: 1024 * 1024 });
const baseMetaKey = (db: string, backupId: string) => `${db}/base/${backupId}.json`;
/** The backup's pg_dump (custom format, uncompressed by pg_dump, zstd-compressed by the agent), next to its tar. */
const dumpKey = (db: string, backupId: string) => `${db}/base/${backupId}.dump.enc`;
const walKey = (db: string, file: string) => `${db}/wal/${file}.enc`;
const walMetaKey = (db: string, file: string) => `${db}/wal/${file}.json`;

export type BackupService = ReturnType<typeof createBackupService>;

export function createBackupService(options: BackupServiceOptions) {
  const { dataDir, secret, runAs, installs, faults, keys } = options;
  const pgDump = options.pgDump ?? pgDumpFor;
  const store = new ObjectStore(options.backupDir);
  const restoresDir = join(dataDir, 'restores');
  const socketsDir = join(dataDir, 'sockets');
  const tokensDir = join(dataDir, 'wal-tokens');
  /** Scratch servers of restores in progress: stopped with the agent. */
  const scratchServers = new Set<ChildProcess>();
  const runningBackups = new Map<string, BackupMeta>();
  const runningRestores = new Map<string, RestoreJob>();
  /** Settles when a running job (`backup:<db>/<id>`, `restore:<id>`) has ended and been recorded: what a long poll waits for. */
  const endings = new Map<string, Promise<void>>();
  const queues = new Map<string, Promise<unknown>>();
  let agentUrl: string | undefined;

  /** Backups and restores of one database run one after the other. */
  function exclusive<T>(id: string, task: () => Promise<T>): Promise<T> {
    const result = (queues.get(id) ?? Promise.resolve()).then(task);
    const settled = result.catch(() => undefined);
    queues.set(id, settled);
    void settled.then(() => { if (queues.get(id) === settled) queues.delete(id); });
    return result;
  }

  function track(key: string, ending: Promise<void>): void {
    endings.set(key, ending);
    void ending.finally(() => endings.delete(key));
  }

  /** Returns once the job `key` has ended, or after `seconds`, whichever comes first; at once when it is not running. */
  async function untilEnded(key: string, seconds: number): Promise<void> {
    const ending = endings.get(key);
    if (!ending || seconds <= 0) return;
    const timer = new AbortController();
    await Promise.race([ending, sleep(seconds * 1000, undefined, { signal: timer.signal }).catch(() => undefined)]);
    timer.abort();
  }

  function walUrl(databaseId: string): string {
    if (!agentUrl) throw new Error('the agent does not know its own URL yet');
    return `${agentUrl}/v1/archives/${databaseId}/wal/%f`;
  }

  /**
   * archive_command and restore_command, as curl run by the server's user: ~0.03 s of CPU per 16 MB segment pushed,
   * where a node script took ~0.25 s (its own start, mostly), paid per WAL file archived and per file a recovery
   * fetches. curl reads the database's token from a header file only that user can read: in argv or in the
   * command string (which `sh -c` shows in /proc) any local user could see it. An answer other than 2xx exits
   * non-zero, so PostgreSQL retries the archiving, and a recovery takes a file the archive lacks (404) as absent;
   * a failed push writes the agent's answer to the server's log.
   */
  async function walCommand(verb: 'push' | 'fetch', databaseId: string, path: string): Promise<string> {
    await makePrivateDir(tokensDir, runAs);
    const headerFile = join(tokensDir, databaseId);
    await writeOwned(headerFile, `Authorization: Bearer ${walToken(secret, databaseId)}\n`);
    const curl = `curl --silent --show-error --max-time 300 --header @'${headerFile}'`;
    return verb === 'push'
      // Expect: without it curl waits for a 100 Continue before sending a body over 1 MiB.
      ? `${curl} --fail-with-body --request POST --header 'Content-Type: application/octet-stream' --header 'Expect:' --upload-file '${path}' '${walUrl(databaseId)}'`
      : `${curl} --fail --output '${path}' '${walUrl(databaseId)}'`;
  }

  /**
   * The lines a server of `databaseId` gets in dbplane.conf: with a data key, WAL goes to the database's
   * own archive (and comes back from it), sealed with that key, which is unwrapped and kept in memory here.
   */
  async function serverSettings(databaseId: string, dataKey: WrappedKey | undefined): Promise<string[]> {
    if (!dataKey) return [];
    await keys.add(databaseId, dataKey, true);
    return [
      'wal_level = replica',
      'archive_mode = on',
      // The RPO: a segment is forced out (and archived) at most 4 s after a write, so losing the host
      // loses 4 s of commits at most, plus the archiving itself (~0.2 s): within the 5 s target. A segment
      // forced out after little WAL is still 16 MiB, mostly empty pages, which zstd shrinks to a few kB
      // (bench/rpo.ts measures it).
      'archive_timeout = 4',
      `archive_command = ${quoteSetting(await walCommand('push', databaseId, '%p'))}`,
      `restore_command = ${quoteSetting(await walCommand('fetch', databaseId, '%p'))}`,
    ];
  }

  // ---- WAL

  function checkWalToken(databaseId: string, authorization: string | undefined): boolean {
    const expected = createHash('sha256').update(`Bearer ${walToken(secret, databaseId)}`).digest();
    return timingSafeEqual(createHash('sha256').update(authorization ?? '').digest(), expected);
  }

  /** Answers only once every copy is durable and verified: PostgreSQL retries archive_command until then. */
  async function archiveWal(databaseId: string, file: string, body: Readable): Promise<void> {
    if (!walName.test(file)) throw new BadRequest(`not a WAL file name: ${file}`);
    let sealing = keys.sealing(databaseId);
    const dataKey = options.instances().describe(databaseId)?.spec.dataKey;
    if (!sealing && dataKey) {
      await keys.add(databaseId, dataKey, true);
      sealing = keys.sealing(databaseId);
    }
    if (!sealing) throw new Conflict(`the agent holds no data key for ${databaseId}`);
    const key = walKey(databaseId, file);
    const result = await putThrough(key, body, compress(), createEncryptor(sealing.key, sealing.version, key));
    const bad = result.copies.filter((c) => !c.ok).map((c) => c.zone);
    if (bad.length > 0) throw new Error(`WAL file ${file} of ${databaseId}: the copies in ${bad.join(', ')} could not be verified`);
    await store.putJson(walMetaKey(databaseId, file), {
      sha256: result.sha256, sizeBytes: result.sizeBytes, keyVersion: sealing.version, archivedAt: new Date().toISOString(),
    });
    archived.arrived(walMetaKey(databaseId, file));
  }

  /** WAL files stored (by the key of their metadata), for a backup waiting for the last one it needs (see walArchived). */
  const archived = new Arrivals();

  /**
   * Resolves once WAL file `file` of `databaseId` is in the archive, woken by archiveWal; fails after walArchiveTimeoutMs.
   * A backup waits here rather than in pg_backup_stop, which looks again only once a second (~1 s per backup here).
   */
  function walArchived(databaseId: string, file: string): Promise<void> {
    const metaKey = walMetaKey(databaseId, file);
    return archived.until(metaKey, () => store.exists(metaKey), walArchiveTimeoutMs,
      () => new Error(`WAL file ${file} of ${databaseId} was not archived within ${walArchiveTimeoutMs / 60_000} minutes`));
  }

  /** The decrypted file, from the first good copy; undefined when the archive does not have it. */
  async function fetchWal(databaseId: string, file: string): Promise<Buffer | undefined> {
    if (!walName.test(file)) throw new BadRequest(`not a WAL file name: ${file}`);
    const parsed = WalMeta.safeParse(await store.getJson(walMetaKey(databaseId, file)));
    if (!parsed.success) return undefined;
    const what = `WAL file ${file} of ${databaseId}`;
    const key = walKey(databaseId, file);
    return store.readFirstGood(key, parsed.data.sha256, what, async (copy, zone) => {
      const chunks: Buffer[] = [];
      await pipeline(copy, createDecryptor(keys.opener(databaseId), `${what} in ${zone}`, key, true), decompress(), async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) chunks.push(chunk);
      });
      return Buffer.concat(chunks);
    });
  }

  async function putThrough(key: string, source: Readable, ...stages: NodeJS.ReadWriteStream[]): Promise<PutResult> {
    let result: PutResult | undefined;
    await (pipeline as (...streams: unknown[]) => Promise<void>)(source, ...stages, async (sealed: AsyncIterable<Buffer>) => {
      result = await store.put(key, sealed);
    });
    return result!;
  }

  async function summary(databaseId: string): Promise<ArchiveSummary> {
    const names = (await store.list(`${databaseId}/wal`)).filter((n) => n.endsWith('.enc'));
    let newest = 0;
    for (const name of names) {
      const meta = WalMeta.safeParse(await store.getJson(walMetaKey(databaseId, name.slice(0, -'.enc'.length))));
      if (meta.success) newest = Math.max(newest, Date.parse(meta.data.archivedAt));
    }
    return {
      databaseId,
      ...(newest > 0 ? { lastWalArchivedAt: new Date(newest).toISOString() } : {}),
      walSegments: names.filter((n) => walSegment.test(n.slice(0, -'.enc'.length))).length,
    };
  }

  // ---- base backups

  async function findBackup(databaseId: string, backupId: string): Promise<BackupMeta | undefined> {
    const running = runningBackups.get(`${databaseId}/${backupId}`);
    if (running) return running;
    const parsed = BackupMeta.safeParse(await store.getJson(baseMetaKey(databaseId, backupId)));
    if (!parsed.success) return undefined;
    const meta = parsed.data;
    // Not running here, yet recorded as running: the agent stopped midway (unless it started while this was read).
    // Its copies were never reported.
    if (meta.job.status === 'running') {
      const started = runningBackups.get(`${databaseId}/${backupId}`);
      if (started) return started;
      return { ...meta, job: { ...meta.job, status: 'failed', copies: [], reason: 'interrupted: the agent stopped while the backup was running' } };
    }
    return meta;
  }

  async function startBackup(id: string, backupId: string, request: StartBackup): Promise<{ created: boolean; job: BackupJob }> {
    return exclusiveStart(`backup:${id}/${backupId}`, async () => {
      const existing = await findBackup(id, backupId);
      if (existing) return { created: false, job: existing.job };
      const instance = options.instances().describe(id);
      if (!instance) throw new NotFound(`no instance ${id} on this host`);
      if (!instance.spec.dataKey) throw new Unprocessable(`instance ${id} has no data key: nothing of it can be backed up`);
      const meta: BackupMeta = {
        job: { id: backupId, databaseId: id, status: 'running', startedAt: new Date().toISOString(), copies: [], keyVersion: instance.spec.dataKey.version },
        kind: request.kind,
        version: instance.spec.version,
        wrappedKey: instance.spec.dataKey,
        nameBound: true,
      };
      // Recorded before anyone can see it running: an agent killed after that reads back `interrupted`, so a
      // retried start finds it failed rather than starting the same backup afresh.
      await store.putJson(baseMetaKey(id, backupId), meta);
      runningBackups.set(`${id}/${backupId}`, meta);
      track(`backup:${id}/${backupId}`, exclusive(id, () => runBackup(meta)).then(
        ({ job, startWal }) => finishBackup(meta, job, startWal),
        (error: unknown) => finishBackup(meta, { ...meta.job, status: 'failed', finishedAt: new Date().toISOString(), copies: [], reason: errorMessage(error) }),
      ));
      return { created: true, job: meta.job };
    });
  }

  async function finishBackup(meta: BackupMeta, job: BackupJob, startWal?: string): Promise<void> {
    const done: BackupMeta = { ...meta, job, ...(job.status === 'completed' && startWal ? { startWal } : {}) };
    if (job.status === 'failed') {
      log('error', 'backup failed', { instance: job.databaseId, backup: job.id, reason: job.reason });
      await store.remove(baseKey(job.databaseId, job.id)).catch(() => undefined);
      await store.remove(dumpKey(job.databaseId, job.id)).catch(() => undefined);
    } else {
      log('info', 'backup completed', { instance: job.databaseId, backup: job.id, sizeBytes: job.sizeBytes });
    }
    await store.putJson(baseMetaKey(job.databaseId, job.id), done)
      .catch((error: unknown) => log('error', 'could not record a backup', { backup: job.id, error: errorMessage(error) }));
    runningBackups.delete(`${job.databaseId}/${job.id}`);
  }

  /**
   * The low-level backup API, as WAL-G and pgBackRest use it: pg_backup_start in a session kept open,
   * a tar of the data directory, pg_backup_stop (which waits until the WAL it needs is archived), then
   * backup_label, tablespace_map and that WAL appended to the tar, so the archive alone starts a server.
   */
  /** The instance once it runs: a server still starting (after a host restart, say) gets a minute. */
  async function runningInstance(id: string): Promise<HostedInstance> {
    for (const deadline = Date.now() + 60_000; ; await sleep(200)) {
      const instance = options.instances().describe(id);
      if (instance?.status === 'running') return instance;
      if (!instance || instance.status === 'failed' || Date.now() > deadline) throw new Error(`instance ${id} is not running`);
    }
  }

  async function runBackup(meta: BackupMeta): Promise<{ job: BackupJob; startWal?: string }> {
    const { databaseId: id } = meta.job;
    const fault = faults.take('backup', id);
    if (fault) throw new Error(fault.message);
    const instance = await runningInstance(id);
    await keys.add(id, meta.wrappedKey, false);
    const key = keys.opener(id)(meta.wrappedKey.version)!;
    const major = majorOf(instance.spec.version);
    const client = await connectAdmin(instance.paths.socket, instance.port);
    let consistentAt: string | undefined;
    let startWal: string | undefined;
    const children: ChildProcess[] = [];
    try {
      const label = `dbplane ${meta.job.id}`;
      await client.query(major >= 15 ? 'SELECT pg_backup_start($1, true)' : 'SELECT pg_start_backup($1, true, false)', [label]);
      // 1 MiB records: with 512-byte ones (-b 1) tar made a write per block, ~30 s of system time per 2 GB here.
      const tar = spawn('tar', [
        '-c', '-b', '2048', '-f', '-', '-C', instance.paths.data,
        ...emptiedDirs.map((d) => `--exclude=./${d}/*`),
        '--exclude=./postmaster.pid', '--exclude=./postmaster.opts', '--exclude=./backup_label', '--exclude=./tablespace_map',
        '--exclude=./dbplane.conf', '--exclude=./recovery.signal', '--exclude=./standby.signal',
        '.',
      ], { stdio: ['ignore', 'pipe', 'pipe'] });
      const zstd = zstdOf(tar);
      children.push(tar, zstd);
      const tarDone = exitOf(tar, 'tar', [0, 1]);
      const owner = runAs ?? { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
      /** After the data directory's archive: a second one, with what pg_backup_stop gives and the WAL, as a zstd frame of its own. */
      const stopBackup = async (): Promise<Buffer> => {
        await tarDone;
        // Without waiting for the archive (false): the stop switches to a new WAL file, and the agent, being the
        // archive, knows as soon as the last one the backup needs is in it (walArchived).
        const stop = major >= 15
          ? 'SELECT labelfile, spcmapfile, pg_walfile_name(lsn) AS stop_wal FROM pg_backup_stop(false)'
          : 'SELECT labelfile, spcmapfile, pg_walfile_name(lsn) AS stop_wal FROM pg_stop_backup(false, false)';
        const { rows: [stopped] } = await client.query<{ labelfile: string; spcmapfile: string | null; stop_wal: string }>(stop);
        consistentAt = new Date().toISOString();
        startWal = startWalOf(stopped.labelfile);
        if (!startWal) throw new Error('pg_backup_stop returned a backup_label without its start WAL file');
        // The archiver sends WAL files in order: the last one archived, all are.
        await walArchived(id, stopped.stop_wal);
        const entries = [
          tarEntry('./backup_label', Buffer.from(stopped.labelfile), owner),
          // postgresql.conf includes it: the agent writes the real one before any start of its own.
          tarEntry('./dbplane.conf', Buffer.from('# written by the dbplane agent before every start of its own servers\n'), owner),
        ];
        if (stopped.spcmapfile) entries.push(tarEntry('./tablespace_map', Buffer.from(stopped.spcmapfile), owner));
        for (const segment of walRange(startWal, stopped.stop_wal)) {
          const wal = await fetchWal(id, segment);
          if (!wal) throw new Error(`WAL file ${segment}, needed by the backup, is not in the archive`);
          entries.push(tarEntry(`./pg_wal/${segment}`, wal, owner));
        }
        // Frames in a row decompress to their contents in a row: the two archives, one after the other (see TarJoiner).
        return zstdCompressSync(Buffer.concat([...entries, tarTrailer()]), zstdLevel1);
      };
      async function* archive(): AsyncGenerator<Buffer> {
        yield* outputOf(zstd, 'zstd', tarDone);
        yield await stopBackup();
      }
      // The dump runs beside the base backup (pg_dump and its zstd are processes of their own: the other core). In
      // the same job: either failing fails the backup, and finishBackup removes both objects.
      const dumpWith = pgDump(major);
      const started = performance.now();
      const stored = <T>(part: string) => (result: T): T => {
        log('info', 'backup part stored', { backup: meta.job.id, part, ms: Math.round(performance.now() - started) });
        return result;
      };
      const [base, dumped] = await Promise.allSettled([
        putThrough(baseKey(id, meta.job.id), Readable.from(archive(), { objectMode: false }), createEncryptor(key, meta.wrappedKey.version, baseKey(id, meta.job.id))).then(stored('base')),
        dumpWith ? dumpDatabase(dumpWith, instance, meta, key).then(stored('pg_dump')) : Promise.resolve(undefined),
      ]);
      if (base.status === 'rejected') throw base.reason;
      if (dumped.status === 'rejected') throw dumped.reason;
      const result = base.value;
      const dump = dumped.value;
      const bad = result.copies.filter((c) => !c.ok).map((c) => c.zone);
      const dumpBad = dump?.copies.filter((c) => !c.ok).map((c) => c.zone) ?? [];
      const finishedAt = new Date().toISOString();
      const reason = bad.length > 0
        ? `the copies in ${bad.join(', ')} could not be verified`
        : dumpBad.length > 0 ? `the pg_dump copies in ${dumpBad.join(', ')} could not be verified` : undefined;
      const job: BackupJob = {
        ...meta.job,
        status: reason ? 'failed' : 'completed',
        finishedAt, consistentAt, sizeBytes: result.sizeBytes, sha256: result.sha256, copies: result.copies,
        ...(dump ? { logicalDump: { sizeBytes: dump.sizeBytes, sha256: dump.sha256, copies: dump.copies, compression: 'zstd' as const } } : {}),
        ...(reason ? { reason } : {}),
      };
      return { job, startWal };
    } finally {
      for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      // Closing the session also aborts a backup that did not reach pg_backup_stop.
      await client.end().catch(() => undefined);
    }
  }

  /**
   * `pg_dump -Fc -Z0 | zstd -1` of the instance's database, as the admin role over its unix socket (as the
   * server's user when the agent is root), sealed with the backup's key into every zone. pg_dump's own
   * compression is gzip (zstd only from pg_dump 16), and it was most of a backup's time: -Z0 piped into zstd -1
   * is 2.6× faster than -Z1, for a 13 % smaller file (`npm run bench:backups`, bench/RESULTS.md). A pg_dump that
   * exits non-zero fails the source stream, so the store keeps nothing of it.
   */
  async function dumpDatabase(binary: string, instance: HostedInstance, meta: BackupMeta, key: Buffer): Promise<PutResult> {
    const { databaseId: id } = meta.job;
    const dump = spawn(...withLargeStdoutBuffer(binary, [
      '--format=custom', '--compress=0', '--no-password', `--host=${instance.paths.socket}`, `--port=${instance.port}`,
      `--username=${adminRole}`, `--dbname=${instance.spec.database}`,
    ]), { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/', env: { PATH: process.env.PATH, LC_ALL: 'C.UTF-8' }, ...(runAs ?? {}) });
    const zstd = zstdOf(dump);
    try {
      const output = outputOf(zstd, 'zstd', exitOf(dump, 'pg_dump', [0]));
      return await putThrough(dumpKey(id, meta.job.id), output, createEncryptor(key, meta.wrappedKey.version, dumpKey(id, meta.job.id)));
    } finally {
      for (const child of [dump, zstd]) if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    }
  }

  async function completedBackup(databaseId: string, backupId: string): Promise<BackupMeta> {
    const meta = await findBackup(databaseId, backupId);
    if (!meta) throw new NotFound(`no backup ${backupId} of ${databaseId}`);
    if (meta.job.status !== 'completed' || !meta.job.sha256) throw new Conflict(`backup ${backupId} of ${databaseId} is ${meta.job.status}`);
    return meta;
  }

  // ---- WAL retention

  /**
   * Removes, from every zone, the WAL segments (with their metadata) that lie before the start of
   * backup `keepFromBackupId`: no restore of it, or of a later backup, reads them. Positions are
   * compared without the timeline (the last 16 hex digits), so older timelines go too; timeline
   * history files, and everything from the backup's start segment on, stay. Idempotent.
   */
  async function pruneWal(databaseId: string, keepFromBackupId: string): Promise<{ removed: number }> {
    const meta = await completedBackup(databaseId, keepFromBackupId);
    const from = walPosition(meta.startWal ?? await recordStartWal(meta));
    const files = new Set<string>();
    for (const name of await store.list(`${databaseId}/wal`)) {
      const match = prunable.exec(name);
      if (match && walPosition(match[1]!) < from) files.add(match[1]! + match[2]!);
    }
    // Metadata first: a segment without it reads as absent, so a prune cut short never leaves one that looks whole.
    for (const file of [...files].sort()) {
      await store.remove(walMetaKey(databaseId, file));
      await store.remove(walKey(databaseId, file));
    }
    if (files.size > 0) log('info', 'pruned WAL', { instance: databaseId, keepFrom: keepFromBackupId, removed: files.size });
    return { removed: files.size };
  }

  /** For a backup recorded before its start segment was: read it from the backup_label in its archive, and record it. */
  async function recordStartWal(meta: BackupMeta): Promise<string> {
    const label = await readBackup(meta, async (tarZst) => {
      const tar = tarFromZstd(['-x', '-O', '-f', '-', './backup_label'], undefined);
      const chunks: Buffer[] = [];
      tar.output.on('data', (chunk: Buffer) => chunks.push(chunk));
      await Promise.all([pipeline(tarZst, tar.input), tar.exited]);
      return Buffer.concat(chunks).toString('utf8');
    });
    const startWal = startWalOf(label);
    if (!startWal) throw new Unprocessable(`backup ${meta.job.id} of ${meta.job.databaseId} has no backup_label naming its start WAL segment`);
    await store.putJson(baseMetaKey(meta.job.databaseId, meta.job.id), { ...meta, startWal } satisfies BackupMeta);
    return startWal;
  }

  /**
   * The decrypted tar of a backup, from its first good copy, handed to `consume`; fails naming the backup
   * when no copy is good. Still zstd-compressed: `zstd -d` decompresses it in a process of its own (the
   * other core; see tarFromZstd), while this one decrypts. Checked as it is read: by the GCM tags alone
   * when it is sealed with its name (a SHA-256 pass was ~0.8 s of CPU per 600 MB), else by its SHA-256 too.
   */
  async function readBackup<T>(meta: BackupMeta, consume: (tarZst: Readable) => Promise<T>): Promise<T> {
    const { databaseId, id } = meta.job;
    const verify = meta.nameBound ? 'sealed' : 'while';
    return readSealed(meta, baseKey(databaseId, id), meta.job.sha256!, `backup ${id} of ${databaseId}`, { unzstd: false, verify }, consume);
  }

  /**
   * `verify`: how a copy is checked as it is read: by its SHA-256 (store.ts readFirstGood), or `'sealed'`, by the
   * GCM tags of an object sealed with its name, read by the decryption itself (crypto.ts decryptFile).
   */
  async function readSealed<T>(
    meta: BackupMeta, key: string, sha256: string, what: string, how: { unzstd: boolean; verify: Verify | 'sealed' },
    consume: (plain: Readable) => Promise<T>,
  ): Promise<T> {
    const { databaseId } = meta.job;
    await keys.add(databaseId, meta.wrappedKey, false);
    const opener = keys.opener(databaseId);
    const decrypted = async (zone: string, sealed: unknown[]): Promise<T> => {
      const plain = new PassThrough();
      // Both sides settle before the next copy is tried, so nothing of a bad copy is still being written.
      const [consumed, read] = await Promise.allSettled([
        consume(plain),
        (pipeline as (...streams: unknown[]) => Promise<void>)(...sealed, ...(how.unzstd ? [decompress()] : []), plain),
      ]);
      if (read.status === 'rejected') throw read.reason;
      if (consumed.status === 'rejected') throw consumed.reason;
      return consumed.value;
    };
    if (how.verify === 'sealed') {
      return store.readFirstSealed(key, what, (file, zone) => decrypted(zone, [decryptFile(file, opener, `${what} in ${zone}`, key)]));
    }
    return store.readFirstGood(key, sha256, what, (copy, zone) => decrypted(zone, [copy, createDecryptor(opener, `${what} in ${zone}`, key, true)]), how.verify);
  }

  // ---- restores

  const restoreFile = (restoreId: string) => join(restoresDir, `${restoreId}.json`);

  async function findRestore(id: string, restoreId: string): Promise<RestoreJob | undefined> {
    const running = runningRestores.get(restoreId);
    if (running) return running.instanceId === id ? running : undefined;
    const text = await readFile(restoreFile(restoreId), 'utf8').catch(() => undefined);
    const parsed = text === undefined ? undefined : StoredRestore.safeParse(JSON.parse(text));
    if (!parsed?.success || parsed.data.job.instanceId !== id) return undefined;
    const { job } = parsed.data;
    return job.status === 'running' ? { ...job, status: 'failed', reason: 'interrupted: the agent stopped while the restore was running' } : job;
  }

  async function saveRestore(job: RestoreJob): Promise<void> {
    await mkdir(restoresDir, { recursive: true, mode: 0o711 });
    await writeFile(`${restoreFile(job.id)}.tmp`, JSON.stringify({ job }, null, 2), { mode: 0o600 });
    await rename(`${restoreFile(job.id)}.tmp`, restoreFile(job.id));
  }

  async function startRestore(id: string, restoreId: string, request: StartRestore): Promise<{ created: boolean; job: RestoreJob }> {
    return exclusiveStart(`restore:${restoreId}`, async () => {
      const existing = await findRestore(id, restoreId);
      if (existing) return { created: false, job: existing };
      const instance = options.instances().describe(id);
      if (request.mode === 'in_place' && !instance) throw new NotFound(`no instance ${id} on this host`);
      if (request.mode === 'new') {
        if (!request.spec) throw new BadRequest('a restore to a new instance needs its spec', { errors: [{ pointer: '/body/spec', detail: 'required for mode new' }] });
        if (instance) throw new Conflict(`instance ${id} already exists`);
      }
      const job: RestoreJob = { id: restoreId, instanceId: id, status: 'running', startedAt: new Date().toISOString() };
      runningRestores.set(restoreId, job);
      await saveRestore(job);
      track(`restore:${restoreId}`, exclusive(id, () => runRestore(job, request)).then(
        (recoveredTo) => finishRestore({ ...job, status: 'completed', finishedAt: new Date().toISOString(), recoveredTo }),
        (error: unknown) => finishRestore({ ...job, status: 'failed', finishedAt: new Date().toISOString(), reason: errorMessage(error) }),
      ));
      return { created: true, job };
    });
  }

  async function finishRestore(job: RestoreJob): Promise<void> {
    log(job.status === 'completed' ? 'info' : 'error', `restore ${job.status}`, { instance: job.instanceId, restore: job.id, reason: job.reason });
    await saveRestore(job).catch((error: unknown) => log('error', 'could not record a restore', { restore: job.id, error: errorMessage(error) }));
    runningRestores.delete(job.id);
  }

  /**
   * Unpacks the backup beside the live data, recovers it on a scratch server (in place, or to an instant with WAL
   * from the source's archive), and only then swaps it in (in_place) or makes it a new instance. Into a new instance
   * to the backup itself, that instance's first start recovers it. Returns the instant reached.
   */
  async function runRestore(job: RestoreJob, request: StartRestore): Promise<string | undefined> {
    const { source, pointInTime } = request;
    const meta = await completedBackup(source.databaseId, source.backupId);
    await keys.add(source.databaseId, source.dataKey, false);
    const live = options.instances().describe(job.instanceId);
    const spec = request.mode === 'new' ? request.spec! : live!.spec;
    if (majorOf(spec.version) !== majorOf(meta.version)) {
      throw new Error(`backup ${meta.job.id} was made by PostgreSQL ${meta.version}; instance ${job.instanceId} runs ${spec.version}`);
    }
    const install = installs.find((i) => i.version === spec.version);
    if (!install) throw new Error(`PostgreSQL ${spec.version} is not installed on this host`);
    if (pointInTime && meta.job.consistentAt && Date.parse(pointInTime) < Date.parse(meta.job.consistentAt)) {
      throw new Error(`${pointInTime} is before backup ${meta.job.id} became consistent (${meta.job.consistentAt})`);
    }
    if (pointInTime) await makeReachable(source.databaseId);
    // PostgreSQL refuses a target time after the last commit it can replay ("recovery ended before the
    // configured recovery target was reached"), which is where a target at or after the newest archived
    // WAL lands when the source is gone (its host lost). Every commit the archive holds was made before
    // that WAL was archived, so replaying the whole archive reaches the very same state: do that.
    const toEnd = pointInTime !== undefined && await pastArchive(source.databaseId, pointInTime);

    const scratch = join(restoresDir, job.id);
    await mkdir(restoresDir, { recursive: true, mode: 0o711 });
    await rm(scratch, { recursive: true, force: true });
    const port = await freePort();
    const paths: ServerPaths = { data: join(scratch, 'data'), log: join(scratch, 'log'), socket: join(socketsDir, String(port)) };
    try {
      for (const dir of [scratch, paths.log, paths.socket]) await makePrivateDir(dir, runAs);
      log('info', 'restore started', { restore: job.id, backup: meta.job.id });
      await readBackup(meta, async (tarZst) => {
        await rm(paths.data, { recursive: true, force: true });
        await makePrivateDir(paths.data, runAs);
        await untar(tarZst, paths.data);
      });
      log('info', 'restore unpacked', { restore: job.id, backup: meta.job.id });
      for (const dir of emptiedDirs) await makePrivateDir(join(paths.data, dir), runAs);
      // Into a new database, to the backup itself: the new server's first start recovers the data, replaying the
      // backup's WAL from its backup_label (as a plain base backup is started) and going on on the source's
      // timeline, in an archive of its own. No scratch server started, stopped and started again: ~0.2 s less.
      const recovered = request.mode === 'new' && !pointInTime
        ? undefined
        : await recoverInScratch(job, request, { install, spec, paths, port }, meta, toEnd);

      const fault = faults.take('restore', job.instanceId);
      if (fault) throw new Error(fault.message);
      if (request.mode === 'in_place') await options.instances().replaceData(job.instanceId, paths.data, job.id);
      else await options.instances().adopt(job.instanceId, spec, paths.data);
      // Only a timeline that went live is archived (the next restore to an instant follows the newest one there).
      if (spec.dataKey && recovered) for (const [file, content] of recovered.histories) await archiveWal(job.instanceId, file, Readable.from([content]));
      // To the end of the archive, the data reflects the last commit replayed (what was lost came after it).
      return toEnd ? recovered?.lastReplayed ?? meta.job.consistentAt : pointInTime ?? meta.job.consistentAt;
    } finally {
      await rm(scratch, { recursive: true, force: true });
      await rm(paths.socket, { recursive: true, force: true });
    }
  }

  /**
   * Recovers unpacked data on a scratch server (to the backup's consistent point, or to an instant with WAL from the
   * source's archive), which promotes itself to a new timeline and stops. Returns the last commit it replayed and
   * the history file of the new timeline, archived once the restored data runs.
   */
  async function recoverInScratch(
    job: RestoreJob, request: StartRestore, server: { install: PostgresInstall; spec: EnsureInstance; paths: ServerPaths; port: number },
    meta: BackupMeta, toEnd: boolean,
  ): Promise<{ lastReplayed: string | undefined; histories: Map<string, Buffer> }> {
    const { source, pointInTime } = request;
    const { install, spec, paths, port } = server;
    await writeOwned(join(paths.data, 'recovery.signal'), '');
    const target = toEnd
      ? [] // no target: replay all the archive holds, then promote
      : pointInTime
        ? [`recovery_target_time = ${quoteSetting(pgTimestamp(pointInTime))}`, "recovery_target_action = 'promote'"]
        : ["recovery_target = 'immediate'", "recovery_target_action = 'promote'"];
    // To an instant, WAL past the backup comes from the source's archive (opened with the source's key).
    // To the backup itself, all it reads is in pg_wal already: the backup's WAL (in the tar) and the
    // archive's timeline histories, written there now, from which the new timeline is chosen. PostgreSQL
    // wants a restore_command all the same, and reads pg_wal when it fails: `false` spares a node
    // process and a decryption per segment and per timeline probed.
    const restoreCommand = pointInTime ? await walCommand('fetch', source.databaseId, '%p') : 'false';
    if (!pointInTime) await copyHistories(source.databaseId, join(paths.data, 'pg_wal'));
    await writeServerConfig(paths, port, spec.settings, runAs, [
      // New WAL (from the promotion on) goes to the restored database's own archive, under its own key:
      ...await serverSettings(job.instanceId, spec.dataKey),
      // ...though not from this scratch server, which would push it while shutting down (and first switch
      // to a new segment to push that too): it marks files ready, the restored instance pushes them, and
      // the new timeline's history goes as soon as the restored data runs, so the next restore sees that timeline.
      "archive_command = ''",
      `restore_command = ${quoteSetting(restoreCommand)}`,
      `recovery_target_timeline = ${quoteSetting(await timelineAt(source.databaseId, pointInTime))}`,
      ...target,
    ]);
    const lastReplayed = await recover(install, paths, port, `backup ${meta.job.id}`);
    const histories = await newHistories(join(paths.data, 'pg_wal'));
    log('info', 'restore recovered', { restore: job.id, backup: meta.job.id });
    return { lastReplayed, histories };
  }

  /** Writes every timeline history file of the archive of `databaseId` into `dir`, decrypted, for the server's user. */
  async function copyHistories(databaseId: string, dir: string): Promise<void> {
    for (const name of await store.list(`${databaseId}/wal`)) {
      const file = name.slice(0, -'.enc'.length);
      if (!walHistory.test(file) || !name.endsWith('.enc')) continue;
      const content = await fetchWal(databaseId, file);
      if (content) await writeOwned(join(dir, file), content);
    }
  }

  /**
   * The history file of the timeline a scratch server's promotion started (marked ready to archive in `walDir`), read
   * now and marked done, as PostgreSQL's archiver would: the agent archives it once the restored data runs (the
   * server's archiver pushing the same key at the same time would spoil the copies).
   */
  async function newHistories(walDir: string): Promise<Map<string, Buffer>> {
    const histories = new Map<string, Buffer>();
    const status = join(walDir, 'archive_status');
    for (const entry of await readdir(status)) {
      const file = entry.slice(0, -'.ready'.length);
      if (!entry.endsWith('.ready') || !walHistory.test(file)) continue;
      histories.set(file, await readFile(join(walDir, file)));
      await rename(join(status, entry), join(status, `${file}.done`));
    }
    return histories;
  }

  /**
   * The timeline to follow. Every restore in place starts a new timeline (its history file archived
   * then), branching off where that restore stopped. To a backup's own consistent point: the backup's
   * timeline (`current`). To an instant: the newest timeline that existed then, so an instant before a
   * restore is looked for on the branch that was live at that time, not on a later one.
   */
  async function timelineAt(databaseId: string, pointInTime: string | undefined): Promise<string> {
    if (!pointInTime) return 'current';
    const histories = (await store.list(`${databaseId}/wal`)).filter((n) => n.endsWith('.enc') && walHistory.test(n.slice(0, -'.enc'.length)));
    let timeline = 0;
    for (const name of histories) {
      const file = name.slice(0, -'.enc'.length);
      const meta = WalMeta.safeParse(await store.getJson(walMetaKey(databaseId, file)));
      if (meta.success && meta.data.archivedAt <= pointInTime) timeline = Math.max(timeline, parseInt(file.slice(0, 8), 16));
    }
    return timeline ? String(timeline) : 'current';
  }

  /** Whether `pointInTime` is at or after the newest WAL in the archive of `databaseId` (or the archive holds none). */
  async function pastArchive(databaseId: string, pointInTime: string): Promise<boolean> {
    const { lastWalArchivedAt } = await summary(databaseId);
    return lastWalArchivedAt === undefined || Date.parse(pointInTime) >= Date.parse(lastWalArchivedAt);
  }

  /**
   * PostgreSQL refuses to end recovery at a target time after the last commit it replayed. When the
   * source runs here, commit a transaction and switch WAL now, and wait until that segment is archived.
   */
  async function makeReachable(databaseId: string): Promise<void> {
    const source = options.instances().describe(databaseId);
    if (!source || source.status !== 'running' || !source.spec.dataKey) return;
    const client = await connectAdmin(source.paths.socket, source.port);
    let segment: string;
    try {
      await client.query('BEGIN');
      await client.query('SELECT txid_current()');
      await client.query('COMMIT');
      ({ rows: [{ wal: segment }] } = await client.query<{ wal: string }>('SELECT pg_walfile_name(pg_switch_wal()) AS wal'));
    } finally {
      await client.end().catch(() => undefined);
    }
    const deadline = Date.now() + 120_000;
    while (!(await store.exists(walMetaKey(databaseId, segment)))) {
      if (Date.now() > deadline) throw new Error(`WAL file ${segment} of ${databaseId} was not archived within 120 s`);
      await sleep(200);
    }
  }

  async function untar(tarZst: Readable, into: string): Promise<void> {
    // 1 MiB records (-b 2048) instead of 10 KiB: ~30 % less system time for tar (it reads a pipe and writes files in records).
    const tar = tarFromZstd(['-x', '-b', '2048', '-f', '-', '-C', into], runAs);
    tar.output.resume();
    const results = await Promise.allSettled([pipeline(tarZst, tar.input), tar.exited]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  async function writeOwned(path: string, content: string | Buffer): Promise<void> {
    await writeFile(path, content, { mode: 0o600 });
    if (runAs) await chown(path, runAs.uid, runAs.gid);
  }

  /**
   * Runs a scratch server until recovery has ended (it promotes itself), then stops it cleanly.
   * Returns when the last transaction it replayed committed, if it replayed any.
   */
  async function recover(install: PostgresInstall, paths: ServerPaths, port: number, what: string): Promise<string | undefined> {
    const child = spawnPostmaster(install, paths, runAs);
    scratchServers.add(child);
    let stderrTail = '';
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderrTail = (stderrTail + chunk).slice(-2000); });
    const exited = new Promise<string>((resolve) => {
      child.once('error', (error) => resolve(error.message));
      child.once('exit', (code, signal) => resolve(signal ? `killed by ${signal}` : `exit code ${code}`));
    });
    let gone: string | undefined;
    void exited.then((how) => { gone = how; });
    let lastReplayed: string | undefined;
    const started = Date.now();
    let promotedMs: number | undefined;
    try {
      const deadline = Date.now() + recoveryTimeoutMs;
      for (;;) {
        if (gone !== undefined) throw new Error(`recovery from ${what} failed (${gone}): ${await serverComplaint(paths.log, stderrTail)}`);
        if (Date.now() > deadline) throw new Error(`recovery from ${what} did not finish within ${recoveryTimeoutMs / 1000} s`);
        const client = new pg.Client({ host: paths.socket, port, user: adminRole, database: 'postgres', connectionTimeoutMillis: 2_000 });
        client.on('error', () => undefined);
        try {
          await client.connect();
          const { rows: [{ recovering, replayed }] } = await client.query<{ recovering: boolean; replayed: Date | null }>(
            'SELECT pg_is_in_recovery() AS recovering, pg_last_xact_replay_timestamp() AS replayed');
          if (!recovering) {
            lastReplayed = replayed?.toISOString();
            promotedMs = Date.now() - started;
            break;
          }
        } catch {
          // Not accepting connections yet, or not consistent yet.
        } finally {
          await client.end().catch(() => undefined);
        }
        await sleep(100); // each check is a connection; the end of recovery is seen within 0.1 s
      }
    } finally {
      if (gone === undefined) {
        child.kill('SIGINT');
        const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
        await exited;
        clearTimeout(timer);
      }
      scratchServers.delete(child);
    }
    // Where a recovery's time goes: up to the promotion (the sync of the unpacked files, replay), then the clean stop.
    log('info', 'scratch server recovered and stopped', { what, promotedMs, stoppedMs: Date.now() - started - promotedMs! });
    return lastReplayed;
  }

  /** Only a restore or a backup job creates an object; a start call racing with itself must not create two. */
  const starting = new Map<string, Promise<unknown>>();
  async function exclusiveStart<T>(key: string, task: () => Promise<T>): Promise<T> {
    while (starting.has(key)) await starting.get(key)!.catch(() => undefined);
    const promise = task();
    starting.set(key, promise);
    try {
      return await promise;
    } finally {
      starting.delete(key);
    }
  }

  return {
    setAgentUrl(url: string) { agentUrl = url; },
    /** At start: a restore the agent was running when it died is over; its scratch folder (and any server left on it) goes. */
    async cleanup(): Promise<void> {
      await mkdir(restoresDir, { recursive: true, mode: 0o711 });
      for (const entry of await readdir(restoresDir, { withFileTypes: true })) {
        if (!entry.isDirectory()) continue;
        await stopStalePostmaster(join(restoresDir, entry.name, 'data'));
        await rm(join(restoresDir, entry.name), { recursive: true, force: true });
        log('info', 'removed the scratch folder of an interrupted restore', { restore: entry.name });
      }
    },
    /** With the agent: scratch servers stop too (fast shutdown). */
    async stopAll(): Promise<void> {
      await Promise.all([...scratchServers].map((child) => new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGINT');
      })));
    },
    serverSettings,
    pruneWal,
    checkWalToken,
    archiveWal,
    fetchWal,
    startBackup,
    /** The job; with `waitSeconds`, a running one once it ended or that long later (a long poll). */
    async getBackup(databaseId: string, backupId: string, waitSeconds = 0): Promise<BackupJob | undefined> {
      await untilEnded(`backup:${databaseId}/${backupId}`, waitSeconds);
      return (await findBackup(databaseId, backupId))?.job;
    },
    async deleteBackup(databaseId: string, backupId: string): Promise<void> {
      if (runningBackups.has(`${databaseId}/${backupId}`)) throw new Conflict(`backup ${backupId} is running`);
      await store.remove(baseKey(databaseId, backupId));
      await store.remove(dumpKey(databaseId, backupId));
      await store.remove(baseMetaKey(databaseId, backupId));
    },
    async purge(databaseId: string): Promise<void> {
      if ([...runningBackups.values()].some((m) => m.job.databaseId === databaseId)) throw new Conflict(`a backup of ${databaseId} is running`);
      await store.remove(databaseId);
    },
    summary,
    startRestore,
    /** Like getBackup. */
    async getRestore(id: string, restoreId: string, waitSeconds = 0): Promise<RestoreJob | undefined> {
      await untilEnded(`restore:${restoreId}`, waitSeconds);
      return findRestore(id, restoreId);
    },
    /**
     * Checks a download URL's signature and expiry (403 otherwise), then streams the backup decrypted.
     * The signature covers database, backup and expiry, not the format: both formats are the backup it authorizes.
     *
     * `base` (default): the tar. It holds the data directory, backup_label and the WAL from backup start
     * to stop, so a user restores it with standard tools: `mkdir -m 700 data && tar -xf backup.tar -C data`,
     * then start PostgreSQL of the same major on it (`postgres -D data`, as a non-root owner of the folder):
     * it replays the included WAL and opens at the backup's consistent point. Its dbplane.conf is an empty
     * placeholder (postgresql.conf includes it), so port and logging are PostgreSQL's defaults.
     *
     * `dump`: the pg_dump taken with the backup (custom format: `pg_restore -d <db> file.dump`); 404 when it has none.
     * Stored zstd-compressed, it is sent as stored, with `contentEncoding: 'zstd'`, to a client that accepts that
     * encoding (`acceptsZstd`; about half the bytes here), and decompressed to any other.
     */
    async download(
      databaseId: string, backupId: string, expires: string | null, signature: string | null, format: DownloadFormat = 'base', acceptsZstd = false,
    ): Promise<{ filename: string; contentType: string; contentEncoding?: 'zstd'; open: (into: NodeJS.WritableStream) => Promise<void> }> {
      const when = Number(expires);
      const expected = Number.isInteger(when) ? downloadSignature(secret, databaseId, backupId, when) : '';
      const same = timingSafeEqual(createHash('sha256').update(signature ?? '').digest(), createHash('sha256').update(expected).digest());
      if (!same || !expected) throw new Forbidden('the download signature is not valid');
      if (when * 1000 < Date.now()) throw new Forbidden('the download link has expired');
      const meta = await completedBackup(databaseId, backupId);
      if (format === 'base') {
        return {
          filename: `${databaseId}-${backupId}.tar`,
          contentType: 'application/x-tar',
          // Checked before: a download passes bytes on as they come.
          open: (into) => readSealed(meta, baseKey(databaseId, backupId), meta.job.sha256!, `backup ${backupId} of ${databaseId}`,
            { unzstd: true, verify: 'before' }, (tar) => pipeline(tar, new TarJoiner(), into)),
        };
      }
      const dump = meta.job.logicalDump;
      if (!dump) throw new NotFound(`backup ${backupId} of ${databaseId} has no pg_dump (no pg_dump as new as PostgreSQL ${meta.version} on its host)`);
      const encoded = dump.compression === 'zstd' && acceptsZstd;
      return {
        filename: `${databaseId}-${backupId}.dump`,
        contentType: 'application/octet-stream',
        ...(encoded ? { contentEncoding: 'zstd' as const } : {}),
        open: (into) => readSealed(meta, dumpKey(databaseId, backupId), dump.sha256, `pg_dump of backup ${backupId} of ${databaseId}`,
          { unzstd: dump.compression === 'zstd' && !encoded, verify: 'before' }, (plain) => pipeline(plain, into)),
      };
    },
  };
}

/** ISO 8601 as recovery_target_time takes it ("2026-11-25 11:54:52.723459+00"; it refuses the "T" and "Z" forms). */
function pgTimestamp(iso: string): string {
  return iso.replace('T', ' ').replace(/Z$/i, '+00');
}

/** The segment backup_label's START WAL LOCATION names ("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)"). */
function startWalOf(label: string): string | undefined {
  return /START WAL LOCATION: .* \(file ([0-9A-F]{24})\)/.exec(label)?.[1];
}

/** Where a segment lies in the WAL, whatever its timeline: log and segment number, fixed-width hex, so strings compare in order. */
function walPosition(segment: string): string {
  return segment.slice(8, 24);
}

/** Archived objects retention may drop: segments, partial segments (end of a timeline), backup history files; never timeline histories. */
const prunable = /^([0-9A-F]{24})(\.partial|\.[0-9A-F]{8}\.backup|)\.(?:enc|json)$/;

/** WAL segment names from `first` to `last` (same timeline, 16 MB segments: 256 per log id). */
function walRange(first: string, last: string): string[] {
  const timeline = first.slice(0, 8);
  const toNumber = (name: string) => BigInt(`0x${name.slice(8, 16)}`) * 0x100n + BigInt(`0x${name.slice(16, 24)}`);
  const names: string[] = [];
  const perLog = BigInt(0x1_0000_0000 / walSegmentBytes);
  for (let n = toNumber(first); n <= toNumber(last); n++) {
    names.push(`${timeline}${(n / perLog).toString(16).toUpperCase().padStart(8, '0')}${(n % perLog).toString(16).toUpperCase().padStart(8, '0')}`);
  }
  return names;
}

async function connectAdmin(socketDir: string, port: number): Promise<pg.Client> {
  const client = new pg.Client({ host: socketDir, port, user: adminRole, database: 'postgres', connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/**
 * `zstd -1` of what `producer` writes to its stdout: the command writes straight into zstd, so the uncompressed
 * bytes make no trip through this process (its reads, pipe writes and GC).
 */
function zstdOf(producer: ChildProcess): ChildProcess {
  const zstd = spawn('zstd', ['-1', '-c', '-q'], { stdio: [producer.stdout!, 'pipe', 'pipe'] });
  producer.stdout!.destroy(); // zstd holds the pipe now
  return zstd;
}

/**
 * coreutils' stdbuf, where the host has it: pg_dump writes its archive through stdio, whose buffer on a pipe is
 * 4 KiB, so a 1.1 GB dump took ~253,000 writes, each paid for again by zstd's reads; with a 1 MiB buffer, ~1,000 (strace).
 */
const hasStdbuf = onPath('stdbuf');

/** `command args`, its stdout given a 1 MiB buffer where stdbuf is at hand; as they are where it is not. */
function withLargeStdoutBuffer(command: string, args: string[]): [string, string[]] {
  return hasStdbuf ? ['stdbuf', ['-o1M', command, ...args]] : [command, args];
}

/**
 * `zstd -d | tar <args>`: two processes joined by a pipe, fed through `input`. GNU tar's own `--zstd`
 * passes the compressed bytes through one more process and pipe, ~50 % slower here.
 */
export function tarFromZstd(args: string[], runAs: RunAs | undefined): { input: NodeJS.WritableStream; output: Readable; exited: Promise<void> } {
  const zstd = spawn('zstd', ['-d', '-c', '-q'], { stdio: ['pipe', 'pipe', 'pipe'], ...(runAs ?? {}) });
  // --ignore-zeros: a backup's archive is two in a row (see TarJoiner); tar stops at the first one's end without it.
  const tar = spawn('tar', ['--ignore-zeros', ...args], { stdio: [zstd.stdout!, 'pipe', 'pipe'], ...(runAs ?? {}) });
  zstd.stdout!.destroy(); // tar holds the pipe now
  // tar's complaint first: when tar fails, zstd fails after it, on a closed pipe.
  const exited = Promise.allSettled([exitOf(tar, 'tar', [0]), exitOf(zstd, 'zstd', [0])]).then((results) => {
    for (const result of results) if (result.status === 'rejected') throw result.reason;
  });
  return { input: zstd.stdin!, output: tar.stdout!, exited };
}

/**
 * A command's output that fails, rather than ends, when the command exits non-zero or `fed` (what feeds
 * its input) fails: so the store keeps nothing of a stream cut short.
 */
function outputOf(child: ChildProcess, name: string, fed: Promise<unknown> = Promise.resolve()): Readable {
  const done = Promise.all([exitOf(child, name, [0]), fed]);
  done.catch(() => undefined); // awaited at the end of the output
  async function* untilDone(): AsyncGenerator<Buffer> {
    for await (const chunk of child.stdout!) yield chunk as Buffer;
    await done;
  }
  // Read ahead up to 16 MiB: a command that waits on a full pipe while the store writes (pg_dump) is time lost.
  return Readable.from(untilDone(), { objectMode: false, highWaterMark: 16 * 1024 * 1024 });
}

function exitOf(child: ChildProcess, name: string, okCodes: number[]): Promise<void> {
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-2000); });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code !== null && okCodes.includes(code)) resolve();
      else reject(new Error(`${name} failed (${signal ?? `exit code ${code}`}): ${stderr.trim().split('\n').slice(-3).join(' / ')}`));
    });
  });
}

/** What a server that stopped said last: stderr before its log collector started, else its newest log file. */
async function serverComplaint(logDir: string, stderrTail: string): Promise<string> {
  const files = await readdir(logDir).catch(() => [] as string[]);
  let text = stderrTail;
  if (files.length > 0) {
    const newest = (await Promise.all(files.map(async (f) => ({ f, t: (await stat(join(logDir, f))).mtimeMs })))).sort((a, b) => b.t - a.t)[0];
    text += await readFile(join(logDir, newest.f), 'utf8').catch(() => '');
  }
  // The FATAL line often just says "contains errors"; the lines before it say which.
  const lines = text.split('\n').filter((l) => /FATAL|PANIC|ERROR|invalid|could not/.test(l)).slice(-3)
    .map((l) => l.replace(/^\S+ \S+ \S+ \[\d+\] /, '').replace(/\s+/g, ' '));
  return lines.join(' / ') || 'no message';
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer().once('error', reject).listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}
