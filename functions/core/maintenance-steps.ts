import middy from '@middy/core';
import { z } from 'zod';
import { Unprocessable } from './errors.ts';
import {
  expectedSeconds, type MaintenanceDeps, type MaintenanceRunDeps, pendingFieldOf, startBlocker, transition,
} from './maintenance.ts';
import {
  clockAt, following, type Maintenance, MaintenanceNotNeeded, MaintenanceWindowClosed, type MaintenanceRun, planned, windowOf,
} from './maintenance-model.ts';
import { lastWindowStart, windowEnd } from './maintenance-window.ts';
import type { Database, Operation } from './model.ts';
import { failureReason, type PollResult } from './operations.ts';
import { requestPlanChange } from './plans.ts';
import { requestRestart } from './restarts.ts';
import { requestUpgrade } from './upgrades.ts';

/**
 * The Maintenance workflow's steps: re-check the window and start the item's operation through the same domain
 * functions as the API, wait for it, and end the item `done` or `failed` (or back to `queued` when it may not
 * start). Each is safe to run twice.
 */

export const MaintenanceStepInput = z.object({
  maintenanceId: z.string(),
  databaseId: z.string(),
  operationProgress: z.object({ ready: z.boolean(), attempts: z.number().int() }).optional(),
  /** The error a Catch put at `$.error`. */
  error: z.object({ Error: z.string(), Cause: z.string().optional() }).optional(),
}).loose();
export type MaintenanceStepInput = z.infer<typeof MaintenanceStepInput>;

/** Typed input in, typed output out, domain errors thrown (a Catch matches their `name`). */
export function maintenanceStep<R>(fn: (input: MaintenanceStepInput) => Promise<R>) {
  return middy<MaintenanceStepInput, R>({ timeoutEarlyInMillis: 0 })
    .before((request) => {
      request.event = MaintenanceStepInput.parse(request.event);
    })
    .handler((input) => fn(input));
}

/** The dispatcher's clock carried on: its instant plus the real time elapsed since (so an injected week stays consistent). */
export function clockOf(item: Pick<Maintenance, 'dispatch'>): Date {
  return item.dispatch ? clockAt(item.dispatch) : new Date();
}

async function load(deps: Pick<MaintenanceDeps, 'store' | 'maintenance'>, input: MaintenanceStepInput): Promise<{ item: Maintenance; database: Database }> {
  const [item, database] = await Promise.all([deps.maintenance.get(input.databaseId, input.maintenanceId), deps.store.getDatabase(input.databaseId)]);
  if (!item || !database) throw new Error(`maintenance ${input.maintenanceId} or database ${input.databaseId} not found`);
  return { item, database };
}

/**
 * Starts the item's operation. A change the database has already (the customer applied it now) is
 * MaintenanceNotNeeded. Then the window again, at the dispatcher's clock: still open, not frozen, long enough for
 * the kind's p95 (else MaintenanceWindowClosed). Then the operation, started as the API starts it for its owner
 * (`when: now`): the same checks, the same lock (a busy database is OperationInProgress), carrying the window's end
 * for its disruptive steps. A customer's item runs the change of record on the database (the newest request).
 */
export async function startMaintenanceOperation(deps: MaintenanceRunDeps, input: MaintenanceStepInput): Promise<void> {
  const { item, database } = await load(deps, input);
  if (item.operationId) return;
  const customer = item.source === 'customer';
  if (customer && database[pendingFieldOf(item.kind)]?.maintenanceId !== item.id) throw new Unprocessable('the queued change is no longer on the database');
  const version = item.kind === 'upgrade' ? (customer ? database.pendingUpgrade!.version : item.target.version!) : undefined;
  const plan = item.kind === 'change_plan' ? (customer ? database.pendingPlanChange!.plan : item.target.plan!) : undefined;
  if ((version && database.version === version) || (plan && database.plan === plan)) {
    throw new MaintenanceNotNeeded(`the database is on ${version ?? plan} already (changed since this maintenance was planned)`);
  }
  const blocker = await startBlocker(item, windowOf(database), clockOf(item), {
    expectedSeconds: expectedSeconds(item.kind, (await deps.maintenance.durations())[item.kind]),
    freezes: () => deps.maintenance.freezes(item.accountId),
  });
  if (blocker) throw new MaintenanceWindowClosed(blocker.reason);
  const caller = { accountId: item.accountId, scopes: ['databases' as const] };
  // Outside apply-now, the operation carries the window's end: its disruptive steps check it (see stepHandler).
  const window = windowOf(database);
  const maintenanceRun: MaintenanceRun | undefined = item.applyNow || !item.dispatch ? undefined : {
    maintenanceId: item.id, windowEnd: windowEnd(window, lastWindowStart(window, clockOf(item))).toISOString(), clock: item.dispatch,
  };
  const runDeps = { ...deps, now: () => clockOf(item), maintenanceRun };
  let operation: Operation | undefined;
  if (version) ({ operation } = await requestUpgrade(runDeps, caller, database.id, { version, when: 'now' }));
  else if (plan) ({ operation } = await requestPlanChange(runDeps, caller, database.id, { plan, when: 'now' }));
  else ({ operation } = await requestRestart(runDeps, caller, database.id));
  await deps.maintenance.setOperation(item, operation!.id, clockOf(item).toISOString());
}

export async function checkMaintenanceOperation(deps: MaintenanceDeps, input: MaintenanceStepInput): Promise<PollResult> {
  const attempts = (input.operationProgress?.attempts ?? 0) + 1;
  const { item } = await load(deps, input);
  const operation = item.operationId ? await deps.store.getDatabaseOperation(item.databaseId, item.operationId) : undefined;
  if (!operation) throw new Error(`maintenance ${item.id} has no operation`);
  return { ready: operation.finishedAt !== undefined, attempts };
}

/** What sends an item back to wait rather than failing it: the window, or another operation holding the database. */
const notNow = ['MaintenanceWindowClosed', 'OperationInProgress', 'Conflict'];

/**
 * Ends the run: back to `queued` when it may not start now (planned in the window open now, which the dispatcher
 * retries, or the next one) or when its operation rolled back because the window closed before a disruptive step
 * (the next window); `cancelled` when the change was there already; `failed` with the error; else `done` when its
 * operation succeeded (its run time then counts for the kind's p95) or `failed` with the operation's reason (the
 * operation rolled itself back).
 */
export async function endMaintenance(deps: MaintenanceDeps, input: MaintenanceStepInput): Promise<Pick<Maintenance, 'status' | 'reason'>> {
  const { item, database } = await load(deps, input);
  if (item.status !== 'running') return { status: item.status, reason: item.reason };
  const now = clockOf(item);
  const window = windowOf(database);
  const requeue = async (to: Pick<Maintenance, 'windowStart' | 'windowEnd'>, reason: string) => {
    const queued = await transition(deps, item, { from: ['running'] }, {
      status: 'queued', ...to, reason, applyNow: undefined, dispatch: undefined, operationId: undefined,
    }, now);
    return { status: queued?.status ?? item.status, reason };
  };
  if (input.error && notNow.includes(input.error.Error)) return requeue(planned(window, now, item.notBefore), failureReason(input.error));
  const operation = item.operationId ? await deps.store.getDatabaseOperation(item.databaseId, item.operationId) : undefined;
  if (!input.error && item.dispatch && operation?.status === 'rolled_back' && operation.error?.startsWith('MaintenanceWindowClosed:')) {
    const run = following(window, lastWindowStart(window, new Date(item.dispatch.instant)));
    return requeue(run, `operation ${operation.id} rolled back: ${operation.error}`);
  }
  const succeeded = !input.error && operation?.status === 'succeeded';
  const notNeeded = input.error?.Error === 'MaintenanceNotNeeded';
  const reason = input.error
    ? failureReason(input.error)
    : succeeded ? undefined : `operation ${operation?.id ?? '(none)'} ended ${operation?.status ?? 'missing'}: ${operation?.error ?? 'no reason given'}`;
  const status = succeeded ? 'done' : notNeeded ? 'cancelled' : 'failed';
  const ended = await transition(deps, item, { from: ['running'] }, { status, reason, finishedAt: now.toISOString() }, now);
  if (!ended) return { status: item.status };
  if (item.source === 'customer') await deps.store.clearPendingChange(item.databaseId, pendingFieldOf(item.kind), item.id);
  if (succeeded && item.dispatch) await deps.maintenance.recordDuration(item.kind, (Date.now() - Date.parse(item.dispatch.realAt)) / 1000);
  return { status: ended.status, reason };
}
