import { z } from 'zod';
import type { AgentClient } from './agent-client.ts';
import { type Deps, findDatabase } from './databases.ts';
import { NotFound, OperationInProgress, Unprocessable } from './errors.ts';
import {
  finishedMaintenanceStatuses, following, type FreezePeriod, FreezePeriod as FreezePeriodSchema, Maintenance, type MaintenanceKind, type MaintenanceStatus, planned,
  windowOf,
} from './maintenance-model.ts';
import type { MaintenanceStore } from './maintenance-store.ts';
import {
  hourMs, isOpen, lastWindowStart, MaintenanceWindow, openSlots, plannedWindowStart, remaining, windowEnd,
} from './maintenance-window.ts';
import type { Caller, Database } from './model.ts';

/**
 * Maintenance: windows, the items that run in them, the dispatcher's tick and the customer's controls
 * (postpone, apply now, freeze periods). The work itself is an existing operation (upgrade, change_plan),
 * started by the Maintenance state machine through the same domain functions as the API.
 */

export interface MaintenanceDeps extends Deps {
  maintenance: MaintenanceStore;
}

/** With the agent: starting the operation reads the live server, like the API does. */
export interface MaintenanceRunDeps extends MaintenanceDeps {
  agent: AgentClient;
}

const clock = (deps: Pick<Deps, 'now'>) => (deps.now ?? (() => new Date()))();

// ---- windows

export const WindowView = z.object({
  window: MaintenanceWindow,
  open: z.boolean().describe('whether the window is open now'),
  nextStart: z.string().describe('the next start of the window (now, if it is open)'),
  nextEnd: z.string(),
});

function windowView(window: MaintenanceWindow, now: Date): z.infer<typeof WindowView> {
  const start = plannedWindowStart(window, now);
  return { window, open: isOpen(window, now), nextStart: start.toISOString(), nextEnd: windowEnd(window, start).toISOString() };
}

export async function getWindow(deps: MaintenanceDeps, caller: Caller, idOrName: string) {
  return windowView(windowOf(await findDatabase(deps.store, caller, idOrName)), clock(deps));
}

/** Sets the window; what waits for a window moves into the new one (an operator's still after its notice period). */
export async function setWindow(deps: MaintenanceDeps, caller: Caller, idOrName: string, window: MaintenanceWindow) {
  const database = await findDatabase(deps.store, caller, idOrName);
  const now = clock(deps);
  await deps.store.setMaintenanceWindow(database.id, window);
  for (const item of (await deps.maintenance.list(database.id)).filter((i) => i.status === 'notified' || i.status === 'queued')) {
    await move(deps, item, { ...planned(window, now, item.notBefore), reason: 'the maintenance window changed' }, now);
  }
  return windowView(window, now);
}

// ---- items

export const MaintenanceList = z.object({
  upcoming: z.array(Maintenance).describe('waiting or running, soonest first'),
  past: z.array(Maintenance).describe('done, failed or cancelled, newest first'),
});

export async function listMaintenance(deps: MaintenanceDeps, caller: Caller, idOrName: string): Promise<z.infer<typeof MaintenanceList>> {
  const database = await findDatabase(deps.store, caller, idOrName);
  const items = await deps.maintenance.list(database.id);
  const finished = (item: Maintenance) => finishedMaintenanceStatuses.includes(item.status);
  return {
    upcoming: items.filter((i) => !finished(i)).sort((a, b) => a.windowStart.localeCompare(b.windowStart)),
    past: items.filter(finished),
  };
}

export async function findMaintenance(deps: MaintenanceDeps, caller: Caller, idOrName: string, maintenanceId: string): Promise<Maintenance> {
  const database = await findDatabase(deps.store, caller, idOrName);
  const item = await deps.maintenance.get(database.id, maintenanceId);
  if (!item) throw new NotFound(`no maintenance "${maintenanceId}"`);
  return item;
}

/** Changes an item's state with its history and an event; undefined when another tick or request changed it first. */
export async function transition(
  deps: Pick<MaintenanceDeps, 'store' | 'maintenance' | 'events'>,
  item: Maintenance,
  expected: { from: readonly MaintenanceStatus[]; attempts?: number },
  changes: Partial<Omit<Maintenance, 'id' | 'databaseId' | 'history'>> & { status: MaintenanceStatus },
  at: Date,
): Promise<Maintenance | undefined> {
  const next = await deps.maintenance.transition(item, expected, { ...changes, updatedAt: at.toISOString() }, { from: item.status, reason: changes.reason });
  if (!next) return undefined;
  await deps.events.maintenanceStatusChanged(next, item.status);
  if (finishedMaintenanceStatuses.includes(next.status)) await rolloutItemFinished(deps, next, at);
  return next;
}

/** Plans a waiting item into another window occurrence, keeping its status. */
function move(deps: Pick<MaintenanceDeps, 'store' | 'maintenance' | 'events'>, item: Maintenance, to: Pick<Maintenance, 'windowStart' | 'windowEnd' | 'reason'>, now: Date) {
  return transition(deps, item, { from: [item.status] }, { ...to, status: item.status }, now);
}

/** An operator's maintenance is noticed at least this long before its window starts. */
export const noticeMs = 24 * hourMs;

// ---- rollouts: what happens when an item of a wave finishes

/**
 * Counts a finished item of a rollout. The last item of a wave decides, once: above the failure threshold the
 * waves left are cancelled (each item with the reason, and a wave-halted event); otherwise the next wave gets
 * its notice and is planned in each database's first window at least 24 h away.
 */
async function rolloutItemFinished(deps: Pick<MaintenanceDeps, 'store' | 'maintenance' | 'events'>, item: Maintenance, now: Date): Promise<void> {
  if (!item.rolloutId || item.wave === undefined) return;
  const at = now.toISOString();
  const rollout = await deps.maintenance.countWaveOutcome(item.rolloutId, item.wave, item.status === 'failed', at);
  const wave = rollout.waves[item.wave];
  if (wave.finished < wave.size) return;
  const rate = wave.failed / wave.size;
  // A wave left empty (its rollout's creation stopped before writing any of its items) is passed over.
  const later = rollout.waves.map((_, i) => i).filter((i) => i > item.wave!);
  const next = later.find((i) => rollout.waves[i].size > 0);
  const halt = rate > rollout.failureThreshold && next !== undefined;
  const reason = halt
    ? `wave ${item.wave + 1} failed ${wave.failed} of ${wave.size} (${Math.round(rate * 100)}%), above the threshold of ${Math.round(rollout.failureThreshold * 100)}%`
    : undefined;
  const status = halt ? 'halted' : next !== undefined ? 'running' : 'completed';
  if (!(await deps.maintenance.setWaveStatus(rollout.id, item.wave, 'running', 'finished', { status, reason, updatedAt: at }))) return;
  if (halt) {
    for (const cancelledWave of later) {
      await deps.maintenance.setWaveStatus(rollout.id, cancelledWave, 'waiting', 'cancelled', { updatedAt: at });
      await eachMember(deps, rollout.id, cancelledWave, async (member) => {
        const cancelled = await transition(deps, member, { from: ['scheduled'] }, { status: 'cancelled', reason, finishedAt: at }, now);
        if (cancelled) await deps.events.maintenanceWaveHalted(cancelled, { wave: item.wave!, failed: wave.failed, size: wave.size, threshold: rollout.failureThreshold });
      });
    }
    return;
  }
  for (const empty of later.filter((i) => next === undefined || i < next)) await deps.maintenance.setWaveStatus(rollout.id, empty, 'waiting', 'finished', { updatedAt: at });
  if (next === undefined) return;
  await deps.maintenance.setWaveStatus(rollout.id, next, 'waiting', 'running', { updatedAt: at });
  const notBefore = new Date(now.getTime() + noticeMs).toISOString();
  await eachMember(deps, rollout.id, next, async (member, database) => {
    const noticed = await transition(deps, member, { from: ['scheduled'] }, { status: 'notified', notBefore, notifiedAt: at, ...planned(windowOf(database), now, notBefore) }, now);
    if (noticed) await deps.events.maintenanceScheduled(noticed);
  });
}

async function eachMember(deps: Pick<MaintenanceDeps, 'store' | 'maintenance'>, rolloutId: string, wave: number, fn: (item: Maintenance, database: Pick<Database, 'id' | 'maintenanceWindow'>) => Promise<void>): Promise<void> {
  for (const member of await deps.maintenance.waveMembers(rolloutId, wave)) {
    const [item, database] = await Promise.all([deps.maintenance.get(member.databaseId, member.maintenanceId), deps.store.getDatabase(member.databaseId)]);
    // A database deleted meanwhile keeps its derived window: the dispatcher cancels its item when it is due.
    if (item) await fn(item, database ?? { id: member.databaseId });
  }
}

// ---- the expected duration of a kind: p95 of its past runs

/** Before a kind has this many runs, its default holds. */
const minSamples = 5;
/** Until a kind has `minSamples` runs: conservative (the benches measure 4-12 s a run here; a busy host with large data takes minutes). */
export const defaultExpectedSeconds: Record<MaintenanceKind, number> = { upgrade: 15 * 60, change_plan: 15 * 60, restart: 15 * 60 };

export function expectedSeconds(kind: MaintenanceKind, runs: number[] | undefined): number {
  if (!runs || runs.length < minSamples) return defaultExpectedSeconds[kind];
  const sorted = [...runs].sort((a, b) => a - b);
  return sorted[Math.ceil(0.95 * sorted.length) - 1];
}

// ---- freeze periods

/** Operator limits on freezes: each at most 14 days, at most 30 days starting in any calendar year, at most 10 periods. */
export const freezeLimits = { maxDays: 14, maxDaysPerYear: 30, maxPeriods: 10 } as const;

export const FreezeBody = z.object({ periods: z.array(FreezePeriodSchema).max(freezeLimits.maxPeriods) }).strict();

export const frozenAt = (periods: FreezePeriod[], now: Date) =>
  periods.find((p) => Date.parse(p.from) <= now.getTime() && now.getTime() < Date.parse(p.to));

export async function setFreezes(deps: MaintenanceDeps, caller: Caller, periods: FreezePeriod[]): Promise<{ periods: FreezePeriod[] }> {
  const dayMs = 24 * hourMs;
  const days = periods.map((p) => (Date.parse(p.to) - Date.parse(p.from)) / dayMs);
  const issues = periods.flatMap((p, i) => {
    if (days[i] <= 0) return [{ pointer: `/body/periods/${i}/to`, detail: 'must be after from' }];
    if (days[i] > freezeLimits.maxDays) return [{ pointer: `/body/periods/${i}/to`, detail: `a freeze lasts at most ${freezeLimits.maxDays} days` }];
    return [];
  });
  const perYear = new Map<number, number>();
  periods.forEach((p, i) => perYear.set(new Date(p.from).getUTCFullYear(), (perYear.get(new Date(p.from).getUTCFullYear()) ?? 0) + Math.max(0, days[i])));
  for (const [year, total] of perYear) {
    if (total > freezeLimits.maxDaysPerYear) issues.push({ pointer: '/body/periods', detail: `${Math.ceil(total)} days of freezes in ${year}; at most ${freezeLimits.maxDaysPerYear} a year` });
  }
  if (issues.length > 0) throw new Unprocessable(issues.map((i) => i.detail).join('; '), { errors: issues });
  await deps.maintenance.setFreezes(caller.accountId, periods);
  return { periods };
}

// ---- the dispatcher

export type DispatchOutcome = 'started' | 'resumed' | 'busy' | 'moved' | 'frozen' | 'cancelled' | 'raced';

export interface DispatchResult extends Record<DispatchOutcome, number> {
  /** Index queries (one per start slot that can be open). */
  slots: number;
  /** Items the queries returned: the due ones, nothing else. */
  due: number;
}

const dispatchConcurrency = 16;

/**
 * One tick at `now` (the scheduled event's time): reads, slot by slot through the sparse index, only the items
 * whose window occurrence has started, and starts those that may start. A database busy with another operation
 * is tried again on the next tick; an item whose window closed, or whose expected duration no longer fits in it,
 * moves to the next window; an account's freeze holds it.
 */
export async function runMaintenanceDispatcher(deps: MaintenanceDeps, now: Date): Promise<DispatchResult> {
  const slots = openSlots(now);
  const due = (await Promise.all(slots.map((slot) => deps.maintenance.listDue(slot, now)))).flat();
  const result: DispatchResult = { slots: slots.length, due: due.length, started: 0, resumed: 0, busy: 0, moved: 0, frozen: 0, cancelled: 0, raced: 0 };
  const durations = await deps.maintenance.durations();
  const freezes = new Map<string, Promise<FreezePeriod[]>>();
  // A few at a time: each is a read and a conditional write, so a tick's time follows the due items, not the fleet.
  let next = 0;
  await Promise.all(Array.from({ length: dispatchConcurrency }, async () => {
    for (let item = due[next++]; item; item = due[next++]) {
      const { outcome } = await dispatch(deps, item, now, {
        expectedSeconds: expectedSeconds(item.kind, durations[item.kind]),
        freezes: () => freezes.get(item.accountId) ?? freezes.set(item.accountId, deps.maintenance.freezes(item.accountId)).get(item.accountId)!,
      });
      result[outcome]++;
    }
  }));
  return result;
}

/** Why an item may not start at `now` in `window`, or undefined when it may (`applyNow` skips the window, not the rest). */
export async function startBlocker(
  item: Pick<Maintenance, 'applyNow'>,
  window: MaintenanceWindow,
  now: Date,
  context: { expectedSeconds: number; freezes: () => Promise<FreezePeriod[]> },
): Promise<{ outcome: 'moved' | 'frozen'; reason: string } | undefined> {
  if (item.applyNow) return undefined;
  if (!isOpen(window, now)) return { outcome: 'moved', reason: 'the window closed before it could start' };
  const freeze = frozenAt(await context.freezes(), now);
  if (freeze) return { outcome: 'frozen', reason: `the account is in a freeze until ${freeze.to}` };
  const left = remaining(window, now) / 1000;
  if (left < context.expectedSeconds) {
    return { outcome: 'moved', reason: `${Math.round(left / 60)} min left in the window; it is expected to take ${Math.round(context.expectedSeconds / 60)} min` };
  }
  return undefined;
}

async function dispatch(
  deps: MaintenanceDeps,
  item: Maintenance,
  now: Date,
  context: { expectedSeconds: number; freezes: () => Promise<FreezePeriod[]> },
): Promise<{ outcome: DispatchOutcome; started?: Maintenance }> {
  // Started by an earlier tick: sending the same start again is a no-op, and starts it if that tick died before.
  if (item.status === 'running') {
    await startExecution(deps, item);
    return { outcome: 'resumed' };
  }
  const database = await deps.store.getDatabase(item.databaseId);
  if (!database || database.status === 'deleted' || database.status === 'deleting') {
    await transition(deps, item, { from: [item.status] }, { status: 'cancelled', reason: 'the database was deleted', finishedAt: now.toISOString() }, now);
    return { outcome: 'cancelled' };
  }
  const window = windowOf(database);
  const blocker = await startBlocker(item, window, now, context);
  if (blocker?.outcome === 'frozen') return { outcome: 'frozen' };
  if (blocker) {
    await move(deps, item, { ...following(window, lastWindowStart(window, now)), reason: blocker.reason }, now);
    return { outcome: 'moved' };
  }
  if (database.activeOperation) return { outcome: 'busy' };
  const started = await transition(deps, item, { from: [item.status], attempts: item.attempts }, {
    status: 'running',
    attempts: item.attempts + 1,
    dispatch: { instant: now.toISOString(), realAt: new Date().toISOString() },
    startedAt: now.toISOString(),
    applyNow: item.applyNow,
    reason: undefined,
  }, now);
  if (!started) return { outcome: 'raced' };
  await startExecution(deps, started);
  return { outcome: 'started', started };
}

/** The execution is named after the item and its dispatch: a second start of the same dispatch starts nothing. */
function startExecution(deps: Pick<Deps, 'workflows'>, item: Maintenance) {
  return deps.workflows.startMaintenance({ maintenanceId: item.id, databaseId: item.databaseId }, `${item.id}-${item.attempts}`);
}

// ---- the customer's controls

/**
 * Postpones a waiting item to the window after the one it is planned in: at most `maxPostponements` times, and
 * never past its deadline (422 saying which limit).
 */
export async function postpone(deps: MaintenanceDeps, caller: Caller, idOrName: string, maintenanceId: string): Promise<Maintenance> {
  const item = await findMaintenance(deps, caller, idOrName, maintenanceId);
  // A `scheduled` item (a later wave) has no window yet: it is planned when its wave is released.
  if (item.status !== 'notified' && item.status !== 'queued') throw new Unprocessable(`the maintenance is ${item.status}; only one planned in a window can be postponed`);
  if (item.postponements >= item.maxPostponements) {
    throw new Unprocessable(`the maintenance was postponed ${item.postponements} times already; the limit is ${item.maxPostponements}`, {
      errors: [{ pointer: '/params/maintenanceId', detail: `at most ${item.maxPostponements} postponements` }],
    });
  }
  const database = await findDatabase(deps.store, caller, idOrName);
  const window = windowOf(database);
  const to = following(window, new Date(item.windowStart));
  if (item.deadline && Date.parse(to.windowStart) > Date.parse(item.deadline)) {
    throw new Unprocessable(`the following window starts ${to.windowStart}, after the deadline ${item.deadline}`, {
      errors: [{ pointer: '/params/maintenanceId', detail: `not past the deadline ${item.deadline}` }],
    });
  }
  const now = clock(deps);
  const next = await transition(deps, item, { from: [item.status] }, {
    status: item.status,
    ...to,
    postponements: item.postponements + 1,
    reason: 'postponed by the customer',
  }, now);
  if (!next) throw new Unprocessable('the maintenance changed meanwhile; read it again');
  return next;
}

/** Starts a waiting item now, outside its window, through the dispatcher's own path (a busy database is a 409). */
export async function applyNow(deps: MaintenanceDeps, caller: Caller, idOrName: string, maintenanceId: string): Promise<Maintenance> {
  const item = await findMaintenance(deps, caller, idOrName, maintenanceId);
  if (item.status !== 'notified' && item.status !== 'queued') throw new Unprocessable(`the maintenance is ${item.status}; only a waiting one can be applied now`);
  const database = await findDatabase(deps.store, caller, idOrName);
  if (database.activeOperation) throw new OperationInProgress(database.activeOperation);
  const now = clock(deps);
  const { outcome, started } = await dispatch(deps, { ...item, applyNow: true }, now, { expectedSeconds: 0, freezes: async () => [] });
  if (!started) throw new Unprocessable(`the maintenance could not start now (${outcome}); read it again`);
  return started;
}

/** Which pending field of the database a customer's item runs. */
export const pendingFieldOf = (kind: MaintenanceKind) => (kind === 'upgrade' ? 'pendingUpgrade' : 'pendingPlanChange') satisfies keyof Database;
