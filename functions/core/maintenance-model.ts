import { z } from 'zod';
import { DomainError } from './errors.ts';
import { newId } from './ids.ts';
import { derivedDefaultWindow, type MaintenanceWindow, nextWindowStart, plannedWindowStart, windowEnd } from './maintenance-window.ts';
import type { Database, Operation } from './model.ts';

/** Maintenance records, as the API shows them. Types are inferred from these schemas. */

/**
 * `upgrade`: to `target.version`; `change_plan`: to `target.plan` (both run the existing operations); `restart`: the
 * servers restart on the settings of record (a `restart` operation), the least disruptive way.
 */
export const MaintenanceKind = z.enum(['upgrade', 'change_plan', 'restart']);
export type MaintenanceKind = z.infer<typeof MaintenanceKind>;

/**
 * scheduled: planned by an operator, in a wave not released yet; notified: its notice went out, waiting for its
 * window; queued: waiting for its window without notice (asked for by the customer, or back from a window that
 * closed); running: its operation started; done, failed, cancelled: finished.
 */
export const MaintenanceStatus = z.enum(['scheduled', 'notified', 'queued', 'running', 'done', 'failed', 'cancelled']);
export type MaintenanceStatus = z.infer<typeof MaintenanceStatus>;
export const waitingStatuses = ['scheduled', 'notified', 'queued'] as const satisfies MaintenanceStatus[];
/** What the dispatcher looks at: waiting in a window, or started (a lost start is sent again). */
export const dueStatuses = ['notified', 'queued', 'running'] as const satisfies MaintenanceStatus[];
export const finishedMaintenanceStatuses: readonly MaintenanceStatus[] = ['done', 'failed', 'cancelled'];

export const MaintenanceChange = z.object({
  at: z.string(),
  from: MaintenanceStatus.optional(),
  to: MaintenanceStatus,
  reason: z.string().optional(),
});
export type MaintenanceChange = z.infer<typeof MaintenanceChange>;

/**
 * The dispatcher's clock: `instant` (its scheduled event's time) at real time `realAt`. Now is instant + elapsed real
 * time, so tests can dispatch into any week and AWS runs on real time.
 */
export const DispatchClock = z.object({ instant: z.string(), realAt: z.string() });
export type DispatchClock = z.infer<typeof DispatchClock>;

export const clockAt = (clock: DispatchClock): Date => new Date(Date.parse(clock.instant) + (Date.now() - Date.parse(clock.realAt)));

export const Maintenance = z.object({
  id: z.string(),
  databaseId: z.string(),
  accountId: z.string(),
  kind: MaintenanceKind,
  source: z.enum(['customer', 'operator']).describe("customer: a change queued with when=maintenance_window (its target is the database's pending change); operator: POST /admin/maintenance"),
  target: z.object({ version: z.string().optional(), plan: z.string().optional() }),
  rolloutId: z.string().optional(),
  /** Its wave in the rollout (0 first). */
  wave: z.number().int().optional(),
  status: MaintenanceStatus,
  windowStart: z.string().describe('the start of the window occurrence it is planned in'),
  windowEnd: z.string(),
  /** An operator's maintenance never starts before its notice period is over. */
  notBefore: z.string().optional(),
  notifiedAt: z.string().optional(),
  operationId: z.string().optional().describe('the operation it ran'),
  postponements: z.number().int(),
  maxPostponements: z.number().int(),
  deadline: z.string().optional().describe('no postponement past this instant'),
  reason: z.string().optional().describe('why it is where it is: moved, failed or cancelled'),
  /** How many times the dispatcher started it (the execution of each start is named after it). */
  attempts: z.number().int(),
  /** Started by apply-now: it runs at once, outside the window. */
  applyNow: z.boolean().optional(),
  /** The dispatcher's clock at the start; the steps of its run read now from it. */
  dispatch: DispatchClock.optional(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  history: z.array(MaintenanceChange),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type Maintenance = z.infer<typeof Maintenance>;

/** A freeze period of an account: no maintenance starts from `from` until `to`. */
export const FreezePeriod = z.object({
  from: z.iso.datetime({ offset: true }),
  to: z.iso.datetime({ offset: true }),
  reason: z.string().max(200).optional(),
}).strict();
export type FreezePeriod = z.infer<typeof FreezePeriod>;

/** A database's window: its own, or for records from before windows existed, a stable default derived from its id. */
export const windowOf = (database: Pick<Database, 'id' | 'maintenanceWindow'>): MaintenanceWindow =>
  database.maintenanceWindow ?? derivedDefaultWindow(database.id);

/** Where an item is planned: the window occurrence open at `now` or the next, not before its notice period ends. */
export function planned(window: MaintenanceWindow, now: Date, notBefore?: string): Pick<Maintenance, 'windowStart' | 'windowEnd'> {
  const start = plannedWindowStart(window, now, notBefore ? new Date(notBefore) : undefined);
  return { windowStart: start.toISOString(), windowEnd: windowEnd(window, start).toISOString() };
}

/** The window occurrence after the one holding `start` (what a move or a postponement plans into). */
export function following(window: MaintenanceWindow, start: Date): Pick<Maintenance, 'windowStart' | 'windowEnd'> {
  const next = nextWindowStart(window, new Date(start.getTime() + 1));
  return { windowStart: next.toISOString(), windowEnd: windowEnd(window, next).toISOString() };
}

/** Customers may postpone their own queued changes and operators' maintenance this many times by default. */
export const defaultMaxPostponements = 2;

/** A new item for `database`, planned in its window at `now`. */
export function newMaintenance(
  database: Pick<Database, 'id' | 'accountId' | 'maintenanceWindow'>,
  fields: Pick<Maintenance, 'kind' | 'source' | 'target' | 'status'> & Partial<Pick<Maintenance, 'rolloutId' | 'wave' | 'notBefore' | 'notifiedAt' | 'maxPostponements' | 'deadline'>>,
  now: Date,
): Maintenance {
  const at = now.toISOString();
  return {
    id: newId('mt', now.getTime()),
    databaseId: database.id,
    accountId: database.accountId,
    ...planned(windowOf(database), now, fields.notBefore),
    postponements: 0,
    maxPostponements: defaultMaxPostponements,
    attempts: 0,
    ...fields,
    history: [{ at, to: fields.status }],
    createdAt: at,
    updatedAt: at,
  };
}

export const RolloutWave = z.object({
  percent: z.number().optional().describe('the share of the targeted databases (but a staging wave\'s) maintained once this wave is done (cumulative)'),
  tag: z.string().optional().describe('a staging wave: the targeted databases with this tag, before the percentages'),
  size: z.number().int(),
  finished: z.number().int().describe('items done, failed or cancelled'),
  failed: z.number().int(),
  status: z.enum(['waiting', 'running', 'finished', 'cancelled']),
});

/** An operator's maintenance of a set of databases, in waves. */
export const Rollout = z.object({
  id: z.string(),
  kind: MaintenanceKind,
  to: z.object({ version: z.string().optional(), plan: z.string().optional() }).describe('what each database goes to (a version resolved per major, or a plan)'),
  target: z.record(z.string(), z.unknown()).describe('the selector as asked'),
  failureThreshold: z.number(),
  maxPostponements: z.number().int(),
  deadline: z.string().optional(),
  status: z.enum(['running', 'halted', 'completed']),
  reason: z.string().optional(),
  waves: z.array(RolloutWave),
  skipped: z.number().int().describe('databases matched by the selector that this maintenance does not apply to (already there, or a major upgrade)'),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type Rollout = z.infer<typeof Rollout>;

/**
 * What an operation started by a maintenance carries in its input (`maintenance`): the end of the window it runs in
 * and the dispatcher's clock, so each disruptive step can check the window without knowing maintenance items.
 * Absent when the maintenance was applied now (outside any window).
 */
export const MaintenanceRun = z.object({ maintenanceId: z.string(), windowEnd: z.string(), clock: DispatchClock });
export type MaintenanceRun = z.infer<typeof MaintenanceRun>;

/** The window closed (or is frozen, or too short now) before a disruptive step: the item goes back to wait. */
export class MaintenanceWindowClosed extends DomainError {
  override readonly name = 'MaintenanceWindowClosed';
  readonly status = 409;
  readonly title = 'The maintenance window does not allow this step now';
}

/** The change is there already (applied now by the customer, or by another maintenance): the item ends `cancelled`. */
export class MaintenanceNotNeeded extends DomainError {
  override readonly name = 'MaintenanceNotNeeded';
  readonly status = 409;
  readonly title = 'The maintenance has nothing left to do';
}

/** Throws MaintenanceWindowClosed when `operation` runs for a maintenance whose window has closed (then it rolls back). */
export function checkRunWindow(operation: Pick<Operation, 'input'>, step: string): void {
  if (operation.input.maintenance === undefined) return;
  const run = MaintenanceRun.parse(operation.input.maintenance);
  const now = clockAt(run.clock);
  if (now.getTime() >= Date.parse(run.windowEnd)) {
    throw new MaintenanceWindowClosed(`the maintenance window closed at ${run.windowEnd}; "${step}" was not started (clock ${now.toISOString()})`);
  }
}
