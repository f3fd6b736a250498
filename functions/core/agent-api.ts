import { createHmac } from 'node:crypto';
import { z } from 'zod';
import { EngineName, HostVersion, PostgresSettings } from './catalog.ts';

/**
 * The contract between the control plane and the agent (the data plane), shared by the agent's
 * HTTP server and the control plane's agent client. Every call is authenticated with
 * `Authorization: Bearer <DBPLANE_AGENT_SECRET>`; every mutating call is an idempotent "ensure".
 *
 *   GET    /v1/host                 → HostInfo
 *   PUT    /v1/instances/{id}       EnsureInstance → Instance   (creates or converges; never waits for health;
 *          `?restart=replica`: records the spec but restarts only the replica on it, the first step of a rolling change)
 *   GET    /v1/instances/{id}[?replicaWaitSeconds=N]  → Instance | 404 (long poll: see ReplicaWait)
 *   DELETE /v1/instances/{id}       → 204 (stops the server and removes its data; absent is fine)
 *   PUT    /v1/instances/{id}/replica → Instance (ensures a streaming replica of the instance on this host: a second
 *          server of the same version, copied from the primary with the low-level backup API, streaming from it
 *          over 127.0.0.1 as the role dbplane_replication through the physical slot dbplane_replica; supervised
 *          like the primary, on its own port; idempotent; never waits for it to catch up: poll `nodes[].lagBytes`)
 *   DELETE /v1/instances/{id}/replica → 204 (stops the replica, drops its slot, removes its files; absent is fine)
 *   POST   /v1/instances/{id}/switchover Switchover → Instance (waits for the replica to catch up, holds new connections at the
 *          gateway, shuts the primary down cleanly, promotes the replica, sends connections to it, then makes the old
 *          primary its replica; 409 without a replica that streams; answers once done, in seconds; a retry with the
 *          same id answers without switching back)
 *   GET    /v1/instances/{id}/usage → InstanceUsage (what a plan change checks: size of the data directory,
 *          client connections from pg_stat_activity, the live values of the settings the spec manages, and the
 *          last disk quota check)
 *   GET    /v1/instances/{id}/upgrade-checks?version=X → UpgradeChecks (what would stop or spoil an upgrade to version X,
 *          "major.minor", read from the live primary in every database that accepts connections; changes nothing;
 *          409 when the server is not running, 422 when X is not installed on this host)
 *   POST   /v1/instances/{id}/blue-green StartBlueGreen → BlueGreen (a major upgrade by blue/green, built beside the
 *          running primary: wal_level = logical on it (a restart with new connections held at the gateway, when needed),
 *          a server of the target version in its own folder, roles and schema copied, one subscription per database;
 *          idempotent; 409 while another one is under way; answers once the initial copy has started)
 *   GET    /v1/instances/{id}/blue-green/{bgId} [?waitSeconds=N] → BlueGreen | 404 (progress; `ready` once caught up; long poll: see JobWait)
 *   POST   /v1/instances/{id}/blue-green/{bgId}/cutover → BlueGreen (409 unless `ready`; VACUUM on both servers and
 *          ANALYZE on the new one; then holds new connections, ends the old server's sessions, locks its tables against
 *          writes, drains the subscriptions, copies the sequences, compares every user table's row count on both: a
 *          difference answers 409 and clients go back to the old server, which kept running; else the new server becomes
 *          the primary behind the same gateway, and the old one subscribes to it (copy_data = false: it has the rows), the
 *          state is saved, clients are released; the old server restarts beside the new one, following it, reached by
 *          no client; on 2 nodes the replica is copied afresh from the new primary; a retry answers the saved result)
 *   POST   /v1/instances/{id}/blue-green/{bgId}/finish → BlueGreen (after the cutover: the reverse subscriptions, slots and
 *          publications go, the old server stops, its folder kept for `retiredKeepDays` (removed at the agent's next
 *          start or upgrade after that); idempotent; 409 before the cutover or once rolled back)
 *   POST   /v1/instances/{id}/blue-green/{bgId}/rollback → BlueGreen (after the cutover, before finish: holds new
 *          connections, ends the new server's sessions and locks its tables, drains the reverse subscriptions, copies
 *          the sequences back, compares every row count (a difference: 409, clients stay on the new server); the old
 *          server becomes the primary again (saved before clients are released), the new one and its folder go; on 2
 *          nodes the replica is copied afresh from it; `rolled_back`; idempotent; 409 before the cutover or once finished)
 *   DELETE /v1/instances/{id}/blue-green/{bgId} → 204 (before the cutover: the new server and its folder go, the old one's
 *          slots and publications too; absent is fine; 409 once cut over)
 *   PUT    /v1/faults               Fault → 204 (only when the agent runs with fault injection enabled)
 *   DELETE /v1/faults               → 204
 *
 * Backups (see backups below). A database's archive (base backups and WAL) is named by the database
 * id, which is also its instance id, and outlives the instance (retention after deletion):
 *   PUT    /v1/instances/{id}/backups/{backupId}    StartBackup → BackupJob   (starts in the background; idempotent)
 *   GET    /v1/archives/{id}/backups/{backupId}[?waitSeconds=N]  → BackupJob | 404 (long poll: see JobWait)
 *   DELETE /v1/archives/{id}/backups/{backupId}     → 204 (every copy; absent is fine)
 *   GET    /v1/archives/{id}                        → ArchiveSummary (WAL archived so far)
 *   POST   /v1/archives/{id}/wal-retention          WalRetention → WalRetentionResult (drops WAL no kept backup needs)
 *   GET    /v1/instances/{id}/tables                → TableStats (row count of every user table, read in full)
 *   DELETE /v1/archives/{id}                        → 204 (purge: every backup and WAL segment of the database)
 *   PUT    /v1/instances/{id}/restores/{restoreId}  StartRestore → RestoreJob (starts in the background; idempotent)
 *   GET    /v1/instances/{id}/restores/{restoreId}[?waitSeconds=N]  → RestoreJob | 404 (long poll: see JobWait)
 *   POST/GET /v1/archives/{id}/wal/{file}           (archive_command / restore_command of the servers only: a
 *          per-database token, never the agent secret)
 *   GET    /v1/downloads/{id}/{backupId}?expires=&signature=[&format=dump]   → the decrypted archive: the base
 *          backup as a tar (default) or its pg_dump (`format=dump`, when it has one). No bearer: the signature
 *          is an HMAC of the path and expiry made with `downloadSignature`; refused once expired.
 * Errors: `application/problem+json` with `type`, `title`, `status`, `detail`.
 */

export const WrappedKey = z.object({ version: z.number().int().min(1), wrapped: z.string().min(1) });
export type WrappedKey = z.infer<typeof WrappedKey>;

/** Whether this host holds each server to its plan's share of a resource: `enforced` is never claimed without it. */
export const LimitEnforcement = z.object({
  enforced: z.boolean(),
  /** How it is enforced, or why it is not. */
  detail: z.string(),
});
export type LimitEnforcement = z.infer<typeof LimitEnforcement>;

export const HostInfo = z.object({
  hostId: z.string(),
  versions: z.array(HostVersion),
  volumeEncryption: z.boolean().describe('whether the host can encrypt data volumes (device-mapper)'),
  limits: z.object({ cpu: LimitEnforcement, memory: LimitEnforcement, disk: LimitEnforcement }),
});
export type HostInfo = z.infer<typeof HostInfo>;

export const InstanceId = z.string().regex(/^[a-z0-9][a-z0-9-]{2,62}$/);

export const EnsureInstance = z.object({
  engine: EngineName,
  version: z.string().regex(/^\d+\.\d+$/),
  /** The customer's role; the password arrives only as a SCRAM-SHA-256 verifier, never in clear. */
  role: z.object({
    name: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/),
    scramVerifier: z.string().startsWith('SCRAM-SHA-256$'),
  }),
  database: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/),
  settings: PostgresSettings,
  /**
   * The database's data key, wrapped by the master key. The agent unwraps it in memory only, and
   * encrypts every backup and WAL segment with it. Without one, WAL is not archived.
   */
  dataKey: WrappedKey.optional(),
  /** The plan's disk: beyond it the agent makes the server refuse writes until the data fits again. Absent: no quota. */
  diskQuotaBytes: z.number().int().positive().optional(),
});
export type EnsureInstance = z.infer<typeof EnsureInstance>;

export const InstanceStatus = z.enum(['starting', 'running', 'stopped', 'failed']);

export const InstanceNode = z.object({
  role: z.enum(['primary', 'replica']),
  port: z.number().int(),
  status: InstanceStatus,
  /**
   * Replica only: bytes of WAL the primary has written that the replica has not replayed yet
   * (pg_stat_replication on the primary); absent while the replica is not streaming.
   */
  lagBytes: z.number().int().min(0).optional(),
});
export type InstanceNode = z.infer<typeof InstanceNode>;

export const Instance = z.object({
  id: InstanceId,
  engine: EngineName,
  version: z.string(),
  host: z.string(),
  /** The server's own port. */
  port: z.number().int(),
  /** The stable endpoint clients use (the agent's gateway, on `host`); the server port may change. */
  gatewayPort: z.number().int(),
  status: InstanceStatus,
  /** Why the instance is `failed`, when it is. */
  reason: z.string().optional(),
  /** Its servers: the primary (the gateway's target) and, when it has one, its streaming replica. */
  nodes: z.array(InstanceNode).optional(),
});
export type Instance = z.infer<typeof Instance>;

/** A disk quota check: `exceeded` means the server refuses writes (until a later check finds the data fits). */
export const DiskQuota = z.object({
  limitBytes: z.number().int(),
  usedBytes: z.number().int(),
  exceeded: z.boolean(),
  checkedAt: z.string(),
});
export type DiskQuota = z.infer<typeof DiskQuota>;

/**
 * What a running server uses now, for plan changes: the target plan must hold the data directory (with
 * a margin) and the client connections, and after a resize its settings must read back as the plan's.
 */
export const InstanceUsage = z.object({
  /** Bytes in the data directory (tables, indexes, WAL not yet recycled). */
  diskBytes: z.number().int(),
  /** Client backends in pg_stat_activity, the agent's own connection excluded. */
  connections: z.number().int(),
  /** What the running server says it is (`SHOW server_version`, e.g. "16.14"). */
  serverVersion: z.string(),
  /** `current_setting(name)` of every setting the instance's spec manages (e.g. max_connections, shared_buffers). */
  settings: PostgresSettings,
  /** The agent's last disk quota check of the primary; absent without a quota or before the first check. */
  diskQuota: DiskQuota.optional(),
});
export type InstanceUsage = z.infer<typeof InstanceUsage>;

// ---- backups

export const BackupId = z.string().regex(/^bk-[a-z0-9]{26}$/);
export const RestoreId = z.string().regex(/^op-[a-z0-9]{26}$/);

/** One stored copy of an object, in one zone (an S3 bucket in AWS; a folder locally). */
export const BackupCopy = z.object({
  zone: z.string(),
  /** SHA-256 of the stored (encrypted) bytes of this copy: the object's when it read back as written, else its own. */
  sha256: z.string(),
  ok: z.boolean(),
});

export const StartBackup = z.object({
  /** Recorded with the backup; the agent treats every kind alike (a base backup plus the WAL to make it consistent). */
  kind: z.enum(['scheduled', 'manual', 'pre_restore', 'post_restore', 'post_upgrade']),
});
export type StartBackup = z.infer<typeof StartBackup>;

export const JobStatus = z.enum(['running', 'completed', 'failed']);

/** The longest a GET of a backup or restore job may wait; well under the client's 30 s and the step Lambdas' 60 s. */
export const maxJobWaitSeconds = 20;

/**
 * `?waitSeconds=N` on a GET of a backup or restore job: a running job is answered as soon as it ends
 * (completed or failed), or after N seconds still running. So a poll sees the end at once. The same on a GET
 * of a blue/green upgrade: a `building` one is answered once it is ready or failed.
 */
export const JobWait = z.coerce.number().int().min(0).max(maxJobWaitSeconds).default(0);

/**
 * `?replicaWaitSeconds=N` on a GET of an instance with a replica: answered as soon as the replica runs and has
 * replayed all its primary's WAL (or has failed), or after N seconds. So a poll sees it caught up at once.
 */
export const ReplicaWait = JobWait;

/**
 * A base backup: the data directory copied between pg_backup_start and pg_backup_stop (tar, with the
 * backup_label), encrypted with the database's key in AES-256-GCM chunks, written to every zone.
 */
export const BackupJob = z.object({
  id: BackupId,
  databaseId: z.string(),
  status: JobStatus,
  startedAt: z.string(),
  finishedAt: z.string().optional(),
  /** When the backup became consistent (pg_backup_stop): the earliest point in time it can restore to. */
  consistentAt: z.string().optional(),
  /** Bytes stored per copy (encrypted). */
  sizeBytes: z.number().int().optional(),
  /** SHA-256 of the stored bytes; every good copy has this digest. */
  sha256: z.string().optional(),
  copies: z.array(BackupCopy),
  /**
   * A pg_dump (custom format) taken with the backup where this host has a pg_dump at least as new as
   * the server: what a user restores with pg_restore. Its own snapshot, a moment after the base backup.
   */
  logicalDump: z.object({
    sizeBytes: z.number().int(), sha256: z.string(), copies: z.array(BackupCopy),
    /** `zstd`: an uncompressed pg_dump archive, stored zstd-compressed; absent: pg_dump compressed it itself (older backups). */
    compression: z.literal('zstd').optional(),
  }).optional(),
  keyVersion: z.number().int().optional(),
  /** Why it failed. */
  reason: z.string().optional(),
});
export type BackupJob = z.infer<typeof BackupJob>;

/** What the archive of a database holds: bounds the recovery window. */
export const ArchiveSummary = z.object({
  databaseId: z.string(),
  /** When the newest WAL segment was archived: nothing after it can be recovered yet. */
  lastWalArchivedAt: z.string().optional(),
  walSegments: z.number().int(),
});
export type ArchiveSummary = z.infer<typeof ArchiveSummary>;

/** WAL older than where the oldest kept backup starts is of no use to any restore. */
export const WalRetention = z.object({ keepFromBackupId: BackupId });
export const WalRetentionResult = z.object({ removed: z.number().int() });

/** What a restore drill checks on a scratch server: every user table read in full (corruption surfaces as an error). */
export const TableStats = z.object({
  tables: z.array(z.object({ database: z.string(), schema: z.string(), name: z.string(), rows: z.number().int() })),
  totalRows: z.number().int(),
});
export type TableStats = z.infer<typeof TableStats>;

/** How an upgrade is done: a restart on another minor's binaries, a new server fed by logical replication, or pg_upgrade. */
export const UpgradeMethod = z.enum(['minor', 'logical', 'pg_upgrade']);
export type UpgradeMethod = z.infer<typeof UpgradeMethod>;

export const UpgradeCheckId = z.enum([
  'tables_without_replica_identity', 'prepared_transactions', 'invalid_databases', 'unavailable_extensions',
  'reg_columns', 'aclitem_columns', 'large_objects', 'unlogged_tables', 'materialized_views',
]);
export type UpgradeCheckId = z.infer<typeof UpgradeCheckId>;

export const maxUpgradeCheckObjects = 50;

/** One pre-upgrade check that found something on the live primary (a check that found nothing is not listed). */
export const UpgradeCheck = z.object({
  id: UpgradeCheckId,
  /** `blocking`: the upgrade methods in `appliesTo` would fail or lose data; `warning`: they work, with a caveat. */
  severity: z.enum(['blocking', 'warning']),
  appliesTo: z.array(UpgradeMethod).min(1),
  /** What is wrong and what to do about it. */
  detail: z.string(),
  /** How many were found: tables, columns, transactions … (for large objects: how many large objects). */
  count: z.number().int().min(1),
  /** Names of what was found, "database: schema.name" inside a database; at most maxUpgradeCheckObjects. */
  objects: z.array(z.string()).max(maxUpgradeCheckObjects),
});
export type UpgradeCheck = z.infer<typeof UpgradeCheck>;

export const UpgradeChecks = z.object({ checks: z.array(UpgradeCheck) });
export type UpgradeChecks = z.infer<typeof UpgradeChecks>;

export const StartRestore = z.object({
  /** `in_place`: the instance `{id}` exists and gets the restored data (its port and URL unchanged). `new`: creates instance `{id}` from `spec`. */
  mode: z.enum(['in_place', 'new']),
  source: z.object({
    /** The database whose archive is read. */
    databaseId: z.string(),
    backupId: BackupId,
    dataKey: WrappedKey,
  }),
  /** Replay WAL up to this instant (ISO 8601); absent: stop as soon as the backup is consistent. */
  pointInTime: z.string().datetime({ offset: true }).optional(),
  /** For `new`: the instance to create (its own role password and data key). For `in_place`: ignored. */
  spec: EnsureInstance.optional(),
});
export type StartRestore = z.infer<typeof StartRestore>;

/**
 * A restore: the backup is unpacked beside the live data, recovered (WAL replayed up to the target)
 * and checked on a scratch server; only then, for `in_place`, does it replace the live data, and the
 * old data comes back if the restored server does not start. A failed restore leaves the instance as it was.
 */
export const RestoreJob = z.object({
  id: RestoreId,
  instanceId: z.string(),
  status: JobStatus,
  startedAt: z.string(),
  finishedAt: z.string().optional(),
  /** The instant the restored data reflects, when known. */
  recoveredTo: z.string().optional(),
  reason: z.string().optional(),
});
export type RestoreJob = z.infer<typeof RestoreJob>;

/** The HMAC a download URL carries: made by the control plane, checked by the agent, both with the agent secret. */
export function downloadSignature(secret: string, databaseId: string, backupId: string, expires: number): string {
  return createHmac('sha256', `dbplane-download:${secret}`).update(`${databaseId}/${backupId}/${expires}`).digest('base64url');
}

/** How a converge restarts servers whose settings changed: all of them, or only the replica (see PUT /v1/instances/{id}). */
export const RestartScope = z.enum(['all', 'replica']);
export type RestartScope = z.infer<typeof RestartScope>;

export const Switchover = z.object({ id: z.string().min(1).max(128).describe('names this switchover: a retry with the same id is a no-op') }).strict();
export type Switchover = z.infer<typeof Switchover>;

/** A test-only hook: make the next matching call fail (e.g. to prove a rollback). `cutover` makes the cutover's row counts differ. */
export const Fault = z.object({
  operation: z.enum(['ensureInstance', 'startServer', 'deleteInstance', 'backup', 'restore', 'switchover', 'cutover']),
  instanceId: InstanceId.optional(),
  message: z.string().default('injected fault'),
});
export type Fault = z.infer<typeof Fault>;

// ---- major upgrades: blue/green through logical replication

/** How long the agent keeps the old server's folder after a major upgrade's cutover, for a rollback by hand; then it removes it. */
export const retiredKeepDays = 7;

export const BlueGreenId = z.string().regex(/^[a-z0-9][a-z0-9-]{2,62}$/).describe('names the upgrade (the operation id): a retry with the same id is the same upgrade');

export const StartBlueGreen = z.object({ id: BlueGreenId, version: EnsureInstance.shape.version }).strict();
export type StartBlueGreen = z.infer<typeof StartBlueGreen>;

/** How far one user database of the old server has come on the new one. */
export const DatabaseProgress = z.object({
  database: z.string(),
  subscribed: z.boolean(),
  tables: z.number().int(),
  /** Tables whose initial copy is done and that the subscription's apply worker keeps up to date ('r'). */
  tablesReady: z.number().int(),
  initialCopyDone: z.boolean(),
  /**
   * Times the apply or a table-sync worker failed (the new server's log says why), e.g. after DDL on the
   * old server, which logical replication does not carry: it retries, but a count that grows will not heal.
   */
  errors: z.number().int(),
  /** WAL the old server wrote that the subscription has not confirmed (applied and flushed); absent without its slot. */
  lagBytes: z.number().int().min(0).optional(),
});
export type DatabaseProgress = z.infer<typeof DatabaseProgress>;

/** What the cutover checked while new connections were held. */
export const Cutover = z.object({
  at: z.string(),
  /** How long new connections were held (the stall a client sees). */
  heldMs: z.number().int(),
  /** Every user table's row count, equal on both servers when the cutover happened. */
  tables: TableStats,
  sequences: z.number().int(),
});
export type Cutover = z.infer<typeof Cutover>;

export const BlueGreen = z.object({
  id: BlueGreenId,
  fromVersion: z.string(),
  version: z.string(),
  /** The new server's own port (the admin's; clients keep using the gateway). */
  port: z.number().int(),
  /**
   * `building`: copying and streaming; `ready`: caught up (every table copied, less than 4 MiB to apply, no replication
   * error for 15 s): a cutover may start; `failed`: the new server failed or replication keeps failing (3 errors; `reason`);
   * `cut_over`: it is the primary; `rolled_back`: cut over, then the old server became the primary again.
   */
  status: z.enum(['building', 'ready', 'failed', 'cut_over', 'rolled_back']),
  reason: z.string().optional(),
  databases: z.array(DatabaseProgress),
  cutover: Cutover.optional(),
});
export type BlueGreen = z.infer<typeof BlueGreen>;
