import { z } from 'zod';
import type { BackupJob } from './agent-api.ts';
import type { AgentClient } from './agent-client.ts';
import { type BackupPolicy, findPlan, plans } from './catalog.ts';
import { Conflict, NotFound, OperationInProgress, Unprocessable } from './errors.ts';
import { newId } from './ids.ts';
import type { Backup, BackupKind, Caller, Database, Operation } from './model.ts';
import { type Deps, findDatabase, newDatabase, newOperation, startWorkflow } from './databases.ts';
import type { Store } from './store.ts';

/**
 * Backups and restores: the domain behind the backup API, the backup scheduler and the retention
 * pruner. The bytes live with the agent (three zones, encrypted with the database's key); the table
 * keeps what each backup is and how it went.
 */

export interface BackupDeps extends Deps {
  agent: AgentClient;
}

const dayMs = 86_400_000;

/** The input a restore operation carries (on the restored database's operation). */
export const RestoreInput = z.object({
  into: z.enum(['same', 'new']),
  sourceDatabaseId: z.string(),
  sourceBackupId: z.string(),
  pointInTime: z.string().optional(),
  /** The instant the data goes back to (the pointInTime, or the source backup's consistent point): kept here, as that backup may be pruned later. */
  restoredTo: z.string().optional(),
  /** The undo backup a restore in place takes first. */
  backupId: z.string().optional(),
}).loose();
export type RestoreInput = z.infer<typeof RestoreInput>;

/** The input a restore drill carries: the backup it restores and the scratch server it restores into. */
export const DrillInput = z.object({ drilledBackupId: z.string(), scratchInstanceId: z.string() }).loose();

/** The fields of a backup record once its job completed on the host. */
export function backupOutcome(job: BackupJob): Partial<Backup> {
  return {
    status: 'completed',
    finishedAt: job.finishedAt,
    consistentAt: job.consistentAt,
    sizeBytes: job.sizeBytes,
    sha256: job.sha256,
    copies: job.copies,
    logicalDump: job.logicalDump,
    keyVersion: job.keyVersion,
  };
}

/** The plan's policy with the database's own overrides (already checked to be within the plan). */
export function effectivePolicy(database: Pick<Database, 'plan' | 'backupRetention'>): BackupPolicy {
  const plan = findPlan(database.plan) ?? plans[0];
  return { ...plan.backupPolicy, ...database.backupRetention };
}

function newBackup(database: Database, kind: BackupKind, operationId: string, at: string): Backup {
  return {
    id: newId('bk'), databaseId: database.id, accountId: database.accountId, kind, status: 'running', operationId,
    version: database.version, startedAt: at, copies: [], keyVersion: database.dataKeyVersion,
  };
}

function requireDataKey(database: Database): void {
  if (!database.dataKeyVersion) {
    throw new Unprocessable(`database ${database.name} was created before backups existed and has no data key; recreate it to back it up`);
  }
}

/**
 * Starts a Backup operation (it holds the database's lock; the database keeps serving). A scheduled
 * backup also claims its UTC day, so the scheduler starts at most one a day.
 */
export async function startBackupOperation(deps: Deps, database: Database, kind: 'manual' | 'scheduled' | 'post_restore' | 'post_upgrade'): Promise<{ backup: Backup; operation: Operation }> {
  requireDataKey(database);
  const now = (deps.now ?? (() => new Date()))();
  const at = now.toISOString();
  const operation = newOperation(database.id, database.accountId, 'backup', {}, at);
  const backup = newBackup(database, kind, operation.id, at);
  operation.input = { backupId: backup.id, kind };
  await deps.store.startOperation(operation, ['running'], 'running', {
    scheduledBackupDate: kind === 'scheduled' ? at.slice(0, 10) : undefined,
    extraItems: [{ Put: { TableName: deps.store.table, Item: deps.store.backupItem(backup) } }],
  });
  return { backup, operation: await startWorkflow(deps, 'Backup', operation) };
}

/** The operations after which a database gets a fresh base backup, and the kind of that backup. */
const backupAfter = { restore: 'post_restore', upgrade: 'post_upgrade' } as const;

/**
 * After a restore or an upgrade succeeded, a fresh base backup: restored data runs on a new WAL timeline,
 * an upgraded server on new binaries, so point-in-time recovery to instants after it starts from a base
 * taken then. The same after a major upgrade rolled back after its cutover: the old server did not archive
 * while it followed the new one, so its WAL has a gap no replay crosses. Runs once per operation.
 */
export async function backupAfterChange(deps: Deps, change: Pick<Operation, 'id' | 'databaseId' | 'kind' | 'status' | 'finishedAt' | 'result'>) {
  const rolledBackAfterCutover = change.kind === 'upgrade' && change.status === 'rolled_back' && change.result?.cutoverAt !== undefined;
  if (!(change.kind === 'restore' || change.kind === 'upgrade') || !(change.status === 'succeeded' || rolledBackAfterCutover) || !change.finishedAt) return undefined;
  const kind = backupAfter[change.kind];
  const database = await deps.store.getDatabase(change.databaseId);
  if (database?.status !== 'running') return undefined;
  const backups = await deps.store.listBackups(database.id);
  if (backups.some((b) => b.kind === kind && b.startedAt >= change.finishedAt!)) return undefined;
  return startBackupOperation(deps, database, kind);
}

export async function requestBackup(deps: Deps, caller: Caller, idOrName: string) {
  return startBackupOperation(deps, await findDatabase(deps.store, caller, idOrName), 'manual');
}

export type BackupView = Backup & { expiresAt?: string };

/** The caller's database's backups, newest first, each with the instant retention will remove it (none: kept). */
export async function listBackups(deps: Pick<Deps, 'store' | 'now'>, caller: Caller, idOrName: string): Promise<BackupView[]> {
  const database = await findDatabase(deps.store, caller, idOrName);
  const backups = await deps.store.listBackups(database.id);
  const expiries = retentionExpiries(backups, effectivePolicy(database), database.status === 'deleted');
  return backups.map((b) => ({ ...b, ...(expiries.get(b.id) ? { expiresAt: expiries.get(b.id) } : {}) }));
}

export async function findBackup(store: Store, database: Database, backupId: string): Promise<Backup> {
  const backup = await store.getBackup(database.id, backupId);
  if (!backup) throw new NotFound(`no backup "${backupId}" of database ${database.name}`);
  return backup;
}

const isoWeek = (date: Date) => {
  const d = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  d.setUTCDate(d.getUTCDate() + 3 - ((d.getUTCDay() + 6) % 7));
  const firstThursday = new Date(Date.UTC(d.getUTCFullYear(), 0, 4));
  return `${d.getUTCFullYear()}-W${1 + Math.round((d.getTime() - firstThursday.getTime()) / (7 * dayMs))}`;
};
const month = (date: Date) => date.toISOString().slice(0, 7);

/**
 * When retention removes each backup (grandfather-father-son), as ISO instants; a backup without an
 * entry is kept. Automatic backups: each is kept `dailyRetention` days; the newest of each ISO week
 * `weeklyRetention` weeks; the newest of each month `monthlyRetention` months; and a backup stays
 * while the point-in-time window still needs it as its base. Manual backups: the newest
 * `manualRetention` are kept, older ones go. Failed backups go after a day. The newest completed
 * backup of a live database is never removed; once the database is deleted, everything expires.
 */
export function retentionExpiries(backups: Backup[], policy: BackupPolicy, databaseDeleted: boolean): Map<string, string> {
  const expiries = new Map<string, string>();
  const plus = (iso: string, days: number) => new Date(Date.parse(iso) + days * dayMs).toISOString();
  const completed = backups.filter((b) => b.status === 'completed' && b.consistentAt)
    .sort((a, b) => b.consistentAt!.localeCompare(a.consistentAt!));
  for (const failed of backups.filter((b) => b.status === 'failed')) expiries.set(failed.id, plus(failed.finishedAt ?? failed.startedAt, 1));

  const automatic = completed.filter((b) => b.kind !== 'manual');
  const newestOf = (period: (d: Date) => string) => {
    const seen = new Set<string>();
    return new Set(automatic.filter((b) => {
      const key = period(new Date(b.consistentAt!));
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    }).map((b) => b.id));
  };
  const weekly = newestOf(isoWeek);
  const monthly = newestOf(month);
  automatic.forEach((backup, index) => {
    const at = backup.consistentAt!;
    const candidates = [plus(at, policy.dailyRetention)];
    if (weekly.has(backup.id)) candidates.push(plus(at, 7 * policy.weeklyRetention));
    if (monthly.has(backup.id)) candidates.push(plus(at, 31 * policy.monthlyRetention));
    // Until the next backup is older than the window, this one is the base of its start.
    const next = automatic[index - 1];
    if (next) candidates.push(plus(next.consistentAt!, policy.pointInTimeDays));
    expiries.set(backup.id, candidates.sort().at(-1)!);
  });
  completed.filter((b) => b.kind === 'manual').forEach((backup, index) => {
    if (index >= policy.manualRetention) expiries.set(backup.id, backup.consistentAt!);
    else if (databaseDeleted) expiries.set(backup.id, plus(backup.consistentAt!, policy.dailyRetention));
  });
  const newest = completed[0];
  if (newest && !databaseDeleted) expiries.delete(newest.id);
  if (newest && databaseDeleted && newest.kind !== 'manual') expiries.set(newest.id, plus(newest.consistentAt!, policy.dailyRetention));
  return expiries;
}

export interface RecoveryWindow {
  /** Absent when the database has no completed backup yet. */
  earliest?: string;
  latest?: string;
}

/**
 * From the oldest backup inside the point-in-time window (or the window's start, when an older backup
 * is its base) to now for a live database (a restore first archives its current WAL, see the agent),
 * or to the last archived WAL for a deleted one.
 */
export async function recoveryWindow(deps: BackupDeps, database: Database): Promise<RecoveryWindow> {
  const now = (deps.now ?? (() => new Date()))();
  const consistent = (await deps.store.listBackups(database.id))
    .filter((b) => b.status === 'completed' && b.consistentAt).map((b) => b.consistentAt!).sort();
  if (consistent.length === 0) return {};
  const windowStart = new Date(now.getTime() - effectivePolicy(database).pointInTimeDays * dayMs).toISOString();
  const earliest = consistent[0] > windowStart ? consistent[0] : windowStart;
  if (database.status === 'running') return { earliest, latest: now.toISOString() };
  const { lastWalArchivedAt } = await deps.agent.archive(database.id);
  const newest = consistent.at(-1)!;
  return { earliest, latest: lastWalArchivedAt && lastWalArchivedAt > newest ? lastWalArchivedAt : newest };
}

export const RestoreRequest = z.object({
  backupId: z.string().min(1).max(64).optional(),
  pointInTime: z.iso.datetime({ offset: true }).optional(),
  into: z.enum(['same', 'new']).default('same'),
  /** The new database's name, for `into: new`. */
  name: z.string().optional(),
}).strict();
export type RestoreRequest = z.infer<typeof RestoreRequest>;

/**
 * Restores a database to a backup or an instant: in place (an undo backup first; the URL does not
 * change) or into a new database (its own credentials and key; the source untouched).
 */
export async function requestRestore(deps: BackupDeps, caller: Caller, idOrName: string, request: RestoreRequest) {
  const database = await findDatabase(deps.store, caller, idOrName);
  requireDataKey(database);
  const base = await restoreBase(deps, database, request);
  const at = (deps.now ?? (() => new Date()))().toISOString();
  const pointInTime = request.pointInTime ? new Date(request.pointInTime).toISOString() : undefined;
  const input = { sourceDatabaseId: database.id, sourceBackupId: base.id, restoredTo: pointInTime ?? base.consistentAt, ...(pointInTime ? { pointInTime } : {}) };

  if (request.into === 'same') {
    const operation = newOperation(database.id, caller.accountId, 'restore', {}, at);
    const undo = newBackup(database, 'pre_restore', operation.id, at);
    operation.input = { into: 'same', ...input, backupId: undo.id };
    await deps.store.startOperation(operation, ['running'], 'restoring', {
      extraItems: [{ Put: { TableName: deps.store.table, Item: deps.store.backupItem(undo) } }],
    });
    await deps.events.databaseStatusChanged(database, database.status, 'restoring', operation.id);
    return { database: { ...database, status: 'restoring' as const, activeOperation: operation.id }, operation: await startWorkflow(deps, 'Restore', operation) };
  }

  if (!request.name) throw new Unprocessable('a restore into a new database needs its name', { errors: [{ pointer: '/body/name', detail: 'required when into is "new"' }] });
  const created = newDatabase(caller, { name: request.name, engine: database.engine, plan: database.plan }, database.version, at, 'restore', { into: 'new', ...input });
  // The data inside belongs to the source's role: the fork keeps its name, with a new password.
  const fork = { ...created.database, username: database.username, databaseName: database.databaseName };
  await deps.store.createDatabase(fork, created.operation);
  await deps.events.databaseStatusChanged(fork, 'none', 'creating', created.operation.id);
  return { database: fork, operation: await startWorkflow(deps, 'Restore', created.operation), password: created.password };
}

/** The completed backup to restore from: the one named, or the newest consistent before the instant (inside the window). */
async function restoreBase(deps: BackupDeps, database: Database, request: RestoreRequest): Promise<Backup> {
  if (Boolean(request.backupId) === Boolean(request.pointInTime)) {
    throw new Unprocessable('give either a backupId or a pointInTime', { errors: [{ pointer: '/body', detail: 'exactly one of backupId, pointInTime' }] });
  }
  if (request.backupId) {
    const backup = await findBackup(deps.store, database, request.backupId);
    if (backup.status !== 'completed') throw new Unprocessable(`backup ${backup.id} is ${backup.status}; only a completed backup can be restored`);
    return backup;
  }
  const target = new Date(request.pointInTime!).toISOString();
  const window = await recoveryWindow(deps, database);
  if (!window.earliest || !window.latest || target < window.earliest || target > window.latest) {
    const shown = window.earliest ? `${window.earliest} to ${window.latest}` : 'empty (no completed backup yet)';
    throw new Unprocessable(`${target} is outside the recovery window: ${shown}`, {
      errors: [{ pointer: '/body/pointInTime', detail: `outside the recovery window ${shown}` }],
    });
  }
  const [backups, operations] = await Promise.all([deps.store.listBackups(database.id), deps.store.listOperations(database.id)]);
  const base = pointInTimeBase(backups, branchesOf(operations, backups), target);
  if (!base) throw new Unprocessable(`no backup is consistent before ${target}`, { errors: [{ pointer: '/body/pointInTime', detail: 'no backup before this instant' }] });
  return base;
}

/** A restore in place, as the WAL timelines see it: the data branched off at `restoredTo`, live again from `finishedAt`. */
export interface Branch {
  restoredTo: string;
  finishedAt: string;
}

/** The branches the database's restores in place started (each one a new timeline). */
export function branchesOf(operations: Operation[], backups: Backup[]): Branch[] {
  return operations.flatMap((op) => {
    if (op.kind !== 'restore' || op.status !== 'succeeded' || !op.finishedAt) return [];
    const input = RestoreInput.parse(op.input);
    // Restores recorded before `restoredTo` was: from their source backup, while it is kept.
    const restoredTo = input.restoredTo ?? input.pointInTime ?? backups.find((b) => b.id === input.sourceBackupId)?.consistentAt;
    return input.into === 'same' && restoredTo ? [{ restoredTo, finishedAt: op.finishedAt }] : [];
  });
}

/**
 * The base backup for an instant: the newest consistent before it on the instant's own line of timelines. A backup
 * consistent after the point a restore in place went back to, and taken before that restore finished (its undo
 * backup, for one), lies on the abandoned branch: PostgreSQL cannot replay it into the later timeline ("requested
 * timeline is not a child of this server's history").
 */
export function pointInTimeBase(backups: Backup[], branches: Branch[], target: string): Backup | undefined {
  const abandoned = (backup: Backup) => branches.some((branch) =>
    branch.finishedAt <= target && backup.consistentAt! > branch.restoredTo && backup.startedAt < branch.finishedAt);
  return backups
    .filter((b) => b.status === 'completed' && b.consistentAt && b.consistentAt <= target && !abandoned(b))
    .sort((a, b) => b.consistentAt!.localeCompare(a.consistentAt!))[0];
}

export const BackupScheduleBody = z.object({
  hour: z.number().int().min(0).max(23).describe('UTC hour of the daily backup'),
  retention: z.object({
    dailyRetention: z.number().int().min(1),
    pointInTimeDays: z.number().int().min(1),
  }).partial().strict().optional().describe("overrides inside the plan's limits"),
}).strict();
export type BackupScheduleBody = z.infer<typeof BackupScheduleBody>;

export async function setBackupSchedule(store: Store, caller: Caller, idOrName: string, body: BackupScheduleBody): Promise<Database> {
  const database = await findDatabase(store, caller, idOrName);
  const limits = findPlan(database.plan)!.backupPolicy;
  const errors = Object.entries(body.retention ?? {})
    .filter(([field, value]) => value > limits[field as keyof typeof body.retention & keyof BackupPolicy])
    .map(([field]) => ({ pointer: `/body/retention/${field}`, detail: `at most ${limits[field as keyof BackupPolicy]} on plan ${database.plan}` }));
  if (errors.length) throw new Unprocessable(`the retention exceeds what plan ${database.plan} allows`, { errors });
  return store.setBackupSchedule(database, { backupHour: body.hour, backupRetention: body.retention });
}

export const DownloadFormat = z.enum(['dump', 'base']);
export type DownloadFormat = z.infer<typeof DownloadFormat>;

/**
 * A download link valid for `ttlSeconds`: the backup decrypted, as its pg_dump (restore with pg_restore)
 * where it has one, else as a tar of the data directory (start PostgreSQL on it).
 */
export async function downloadLink(deps: BackupDeps, caller: Caller, idOrName: string, backupId: string, requested?: DownloadFormat, ttlSeconds = 900) {
  const database = await findDatabase(deps.store, caller, idOrName);
  const backup = await findBackup(deps.store, database, backupId);
  if (backup.status !== 'completed') throw new Unprocessable(`backup ${backup.id} is ${backup.status}; only a completed backup can be downloaded`);
  const format = requested ?? (backup.logicalDump ? 'dump' : 'base');
  if (format === 'dump' && !backup.logicalDump) {
    throw new Unprocessable(`backup ${backup.id} has no pg_dump (no pg_dump as new as PostgreSQL ${backup.version} on its host); download format=base`, {
      errors: [{ pointer: '/query/format', detail: 'this backup has only format base' }],
    });
  }
  const expires = Math.floor((deps.now ?? (() => new Date()))().getTime() / 1000) + ttlSeconds;
  return {
    url: deps.agent.downloadUrl(database.id, backup.id, expires, format),
    expiresAt: new Date(expires * 1000).toISOString(),
    format: format === 'dump' ? 'pg_dump' as const : 'tar' as const,
  };
}

/**
 * The backup scheduler's tick: the databases whose backup hour is now (sparse index, no scan), each
 * backed up once that day. A database busy with another operation is tried again on the next tick.
 */
export async function runScheduledBackups(deps: Deps, now: Date): Promise<{ due: number; started: number }> {
  const due = (await deps.store.listDatabasesByBackupHour(now.getUTCHours()))
    .filter((d) => d.status === 'running' && d.dataKeyVersion && d.lastScheduledBackup !== now.toISOString().slice(0, 10));
  let started = 0;
  for (const database of due) {
    try {
      await startBackupOperation({ ...deps, now: () => now }, database, 'scheduled');
      started++;
    } catch (error) {
      if (!(error instanceof OperationInProgress || error instanceof Conflict)) throw error;
    }
  }
  return { due: due.length, started };
}

/**
 * The pruner's tick, for the databases of this hour's slot (each visited once a day): removes what
 * fell out of retention, in every copy, then the record, then the WAL older than the oldest backup
 * left. A deleted database whose backups are all gone loses its WAL archive, its data key and its
 * place in the index.
 */
export async function pruneBackups(deps: BackupDeps, now: Date): Promise<{ databases: number; removed: number }> {
  const databases = await deps.store.listDatabasesByBackupHour(now.getUTCHours());
  let removed = 0;
  // A database busy with an operation (a restore reading old WAL, say) is pruned on its next day.
  for (const database of databases.filter((d) => !d.activeOperation)) {
    const backups = await deps.store.listBackups(database.id);
    const expiries = retentionExpiries(backups, effectivePolicy(database), database.status === 'deleted');
    for (const backup of backups) {
      const expiresAt = expiries.get(backup.id);
      if (!expiresAt || expiresAt > now.toISOString() || backup.status === 'running') continue;
      await deps.agent.deleteBackup(database.id, backup.id);
      await deps.store.deleteBackup(database.id, backup.id);
      removed++;
    }
    const kept = await deps.store.listBackups(database.id);
    if (database.status === 'deleted' && kept.length === 0) {
      await deps.agent.purgeArchive(database.id);
      await deps.store.deleteDataKeys(database.id);
      await deps.store.forgetBackupHour(database.id);
      continue;
    }
    // WAL from before the oldest kept backup can serve no restore any more.
    const oldest = kept.filter((b) => b.status === 'completed').at(-1);
    if (oldest) await deps.agent.pruneWal(database.id, oldest.id);
  }
  return { databases: databases.length, removed };
}

/** A stable pseudo-random day of the week per database, so drills spread evenly over the week. */
export function drillWeekday(databaseId: string): number {
  let hash = 0;
  for (const char of databaseId) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return hash % 7;
}

/** How many drills one tick starts at most: drills restore whole backups, so they come in small batches. */
export const drillBatchSize = 10;

/**
 * The restore drill schedule's tick: of the databases of this hour's slot, those whose drill day is
 * today (each is drilled once a week), up to `drillBatchSize`, each restores its newest completed
 * backup into a scratch server, checks it and records the result and the time it took.
 */
export async function runRestoreDrills(deps: Deps, now: Date): Promise<{ sampled: number; started: number }> {
  const sampled = (await deps.store.listDatabasesByBackupHour(now.getUTCHours()))
    .filter((d) => d.status === 'running' && drillWeekday(d.id) === now.getUTCDay())
    .slice(0, drillBatchSize);
  let started = 0;
  for (const database of sampled) {
    if (await startDrill(deps, database, now)) started++;
  }
  return { sampled: sampled.length, started };
}

/** Starts a drill of the database's newest completed backup; none when it has no backup yet. */
export async function startDrill(deps: Deps, database: Database, now: Date): Promise<Operation | undefined> {
  const newest = (await deps.store.listBackups(database.id)).find((b) => b.status === 'completed');
  if (!newest) return undefined;
  const operation = newOperation(database.id, database.accountId, 'drill', {}, now.toISOString());
  operation.input = { drilledBackupId: newest.id, scratchInstanceId: `drill-${database.id.replace(/^db-/, '')}` };
  await deps.store.putUnlockedOperation(operation);
  return startWorkflow(deps, 'RestoreDrill', operation);
}
