import { z } from 'zod';
import { BackupJob, InstanceNode, type HostInfo } from './agent-api.ts';
import { EngineName, type Plan } from './catalog.ts';
import { MaintenanceWindow } from './maintenance-window.ts';

/** The records dbplane keeps, as the API shows them. Types are inferred from these schemas. */

export const DatabaseName = z.string().regex(/^[a-z][a-z0-9-]{1,39}$/, 'lowercase letters, digits and dashes; 2-40 characters, starting with a letter');

export const DatabaseStatus = z.enum(['creating', 'running', 'restoring', 'deleting', 'deleted', 'failed']);
export type DatabaseStatus = z.infer<typeof DatabaseStatus>;

export const Endpoint = z.object({ host: z.string(), port: z.number().int() });

/** A database tag: `key=value` or a plain label (`pci`); keys and labels lowercase. Operators target maintenance by tag. */
export const Tag = z.string().regex(
  /^[a-z][a-z0-9_.-]{0,39}(=[A-Za-z0-9_.:/-]{1,64})?$/,
  'key=value or a label: the key (or label) lowercase letters, digits, _ . - (at most 40, starting with a letter); the value at most 64 of A-Z a-z 0-9 _ . : / -',
);
/** At most 20, one value per key. */
export const Tags = z.array(Tag).max(20)
  .refine((tags) => new Set(tags.map((t) => t.split('=')[0])).size === tags.length, 'one tag per key (and each label once)');

export const Database = z.object({
  id: z.string(),
  accountId: z.string(),
  name: DatabaseName,
  engine: EngineName,
  version: z.string(),
  plan: z.string(),
  status: DatabaseStatus,
  statusReason: z.string().optional(),
  endpoint: Endpoint.optional(),
  /** The customer's role and database name inside the server. */
  username: z.string(),
  databaseName: z.string(),
  /** SCRAM-SHA-256 verifier of the password; never shown by the API. */
  passwordVerifier: z.string(),
  activeOperation: z.string().optional(),
  /** The UTC hour (0-23) of the daily backup. */
  backupHour: z.number().int().min(0).max(23).default(3),
  /** A per-database retention inside the plan's limits; absent fields follow the plan. */
  backupRetention: z.object({ dailyRetention: z.number().int(), pointInTimeDays: z.number().int() }).partial().optional(),
  /** The UTC date (YYYY-MM-DD) of the last scheduled backup started: at most one a day. */
  lastScheduledBackup: z.string().optional(),
  /** The version of the data key in use (KEY#<n>); absent before provisioning created it or after a purge. */
  dataKeyVersion: z.number().int().optional(),
  /** A plan change asked for the next maintenance window (`when: maintenance_window`); nothing runs it before then. */
  pendingPlanChange: z.object({ plan: z.string(), requestedAt: z.string(), maintenanceId: z.string().optional() }).optional(),
  /** An upgrade requested for the maintenance window (`when: maintenance_window`); nothing runs it before the window. */
  pendingUpgrade: z.object({ version: z.string(), requestedAt: z.string(), maintenanceId: z.string().optional() }).optional(),
  /** The weekly maintenance window; absent on records from before windows existed (see derivedDefaultWindow). */
  maintenanceWindow: MaintenanceWindow.optional(),
  /** Its tags; each has an index item (TAG#<tag>, see Store.setTags) so a maintenance can target it without a scan. */
  tags: Tags.optional(),
  rev: z.number().int(),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type Database = z.infer<typeof Database>;

/** What the API shows of a database: no secrets; `url` (without the password) once it has an endpoint. */
/** One resource of the database's plan, and whether its host holds the server to it: `enforced` is never claimed otherwise. */
export const ResourceLimit = z.object({
  limit: z.number(),
  unit: z.enum(['vCPU', 'bytes']),
  enforced: z.boolean(),
  /** How it is enforced, or why not (as the host reports it). */
  detail: z.string(),
});
export type ResourceLimit = z.infer<typeof ResourceLimit>;

export const ResourceLimits = z.object({ cpu: ResourceLimit, memory: ResourceLimit, disk: ResourceLimit });
export type ResourceLimits = z.infer<typeof ResourceLimits>;

export const DatabaseView = Database.omit({ passwordVerifier: true, rev: true, lastScheduledBackup: true }).extend({
  url: z.string().optional(),
  /** Its servers as the host reports them now (GET /databases/{id} only): primary, and replica with its lag on 2-node plans. */
  nodes: z.array(InstanceNode).optional(),
  /** The plan's CPU, memory and disk, each enforced only if every known host enforces it (GET /databases/{id} only). */
  limits: ResourceLimits.optional(),
});
export type DatabaseView = z.infer<typeof DatabaseView>;

export function databaseView({ passwordVerifier: _verifier, rev: _rev, lastScheduledBackup: _last, ...database }: Database): DatabaseView {
  const { endpoint, username, databaseName } = database;
  return endpoint ? { ...database, url: `postgresql://${username}@${endpoint.host}:${endpoint.port}/${databaseName}` } : database;
}

/** The plan's limits as the hosts (the host inventory) enforce them; with no host known, none is claimed. */
export function resourceLimits(plan: Plan, hosts: Pick<HostInfo, 'limits'>[]): ResourceLimits {
  const limit = (resource: keyof HostInfo['limits'], limit: number, unit: ResourceLimit['unit']): ResourceLimit => {
    const reports = hosts.map((host) => host.limits[resource]);
    const report = reports.find((r) => !r.enforced) ?? reports[0] ?? { enforced: false, detail: 'not enforced: no host has reported its limits yet' };
    return { limit, unit, enforced: report.enforced, detail: report.detail };
  };
  return {
    cpu: limit('cpu', plan.cpuShare, 'vCPU'),
    memory: limit('memory', plan.memoryMb * 1024 ** 2, 'bytes'),
    disk: limit('disk', plan.diskGb * 1024 ** 3, 'bytes'),
  };
}

/**
 * `drill`: a restore drill, which restores into a scratch server and holds no lock on the database. `change_plan`: input
 * `{fromPlan, toPlan}`; `upgrade`: `{fromVersion, toVersion, strategy}`; `restart` (run by maintenance): `{fromPlan, toPlan}`,
 * both the database's plan, whose settings the servers restart on.
 */
export const OperationKind = z.enum(['provision', 'deprovision', 'backup', 'restore', 'drill', 'change_plan', 'upgrade', 'restart']);
export type OperationKind = z.infer<typeof OperationKind>;

export const OperationStatus = z.enum(['pending', 'running', 'succeeded', 'failed', 'rolled_back']);
export type OperationStatus = z.infer<typeof OperationStatus>;
export const finishedStatuses: readonly OperationStatus[] = ['succeeded', 'failed', 'rolled_back'];

export const OperationStep = z.object({
  name: z.string(),
  status: z.enum(['running', 'succeeded', 'failed']),
  startedAt: z.string(),
  finishedAt: z.string().optional(),
  attempts: z.number().int(),
  detail: z.string().optional(),
});
export type OperationStep = z.infer<typeof OperationStep>;

export const Operation = z.object({
  id: z.string(),
  databaseId: z.string(),
  accountId: z.string(),
  kind: OperationKind,
  status: OperationStatus,
  input: z.record(z.string(), z.unknown()),
  steps: z.array(OperationStep),
  error: z.string().optional(),
  /** What the operation found (a drill: the backup, the tables and the time to restore). */
  result: z.record(z.string(), z.unknown()).optional(),
  executionArn: z.string().optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
  finishedAt: z.string().optional(),
});
export type Operation = z.infer<typeof Operation>;

export const BackupKind = z.enum(['scheduled', 'manual', 'pre_restore', 'post_restore', 'post_upgrade']);
export type BackupKind = z.infer<typeof BackupKind>;

/**
 * A base backup of a database, as the control plane records it: the host's job (the agent holds the
 * bytes, in three zones) with who asked for it and why.
 */
export const Backup = BackupJob.extend({
  id: z.string(),
  accountId: z.string(),
  kind: BackupKind,
  operationId: z.string(),
  /** The engine version the backup was taken from. */
  version: z.string(),
});
export type Backup = z.infer<typeof Backup>;

/** A database's data key, wrapped by the master key (KMS in AWS, a local key file locally). */
export const DataKey = z.object({ databaseId: z.string(), version: z.number().int(), wrapped: z.string(), createdAt: z.string() });
export type DataKey = z.infer<typeof DataKey>;

export const AuditEvent = z.object({
  id: z.string(),
  databaseId: z.string(),
  type: z.string(),
  at: z.string(),
  operationId: z.string().optional(),
  detail: z.record(z.string(), z.unknown()),
});
export type AuditEvent = z.infer<typeof AuditEvent>;

export const Scope = z.enum(['databases', 'admin']);
export type Scope = z.infer<typeof Scope>;

export const Account = z.object({ id: z.string(), name: z.string(), createdAt: z.string() });
export type Account = z.infer<typeof Account>;

export const TokenRecord = z.object({
  id: z.string(),
  accountId: z.string(),
  name: z.string(),
  scopes: z.array(Scope),
  createdAt: z.string(),
});
export type TokenRecord = z.infer<typeof TokenRecord>;

/** Who is calling, as the authorizer established it. */
export const Caller = z.object({ accountId: z.string(), scopes: z.array(Scope) });
export type Caller = z.infer<typeof Caller>;
