import { z } from 'zod';
import type { InstanceUsage } from './agent-api.ts';
import type { AgentClient } from './agent-client.ts';
import { findPlan, type Plan, planIds, postgresSettings } from './catalog.ts';
import { type Deps, findDatabase, startOnRunning } from './databases.ts';
import { OperationInProgress, Unprocessable } from './errors.ts';
import type { Caller, Database, Operation } from './model.ts';

/**
 * Plan changes: the checks, the preview and the request behind the plan API. A change reconfigures the
 * primary and restarts it with the target plan's settings, on the same port (the URL does not change);
 * to a 2-node (business) plan the agent then adds a streaming replica on the same host, and to a 1-node
 * plan removes it first. Between two business plans the change rolls: the replica is resized, a switchover
 * makes it the primary (the gateway holds new connections meanwhile), then the old primary is resized and
 * follows it as the replica.
 */

export interface PlanDeps extends Deps {
  agent: AgentClient;
}

export const ChangePlanBody = z.object({
  plan: z.string().min(1).max(64).describe('the target plan id (see GET /plans)'),
  when: z.enum(['now', 'maintenance_window']).default('now')
    .describe('now: start the change; maintenance_window: queue it on the database for its next window (nothing starts now)'),
}).strict();
export type ChangePlanBody = z.infer<typeof ChangePlanBody>;

export const PlanPreviewQuery = z.object({ plan: z.string().min(1).max(64).describe('the target plan id') }).strict();

/** The input a change_plan operation carries. */
export const ChangePlanInput = z.object({ fromPlan: z.string(), toPlan: z.string() }).loose();
export type ChangePlanInput = z.infer<typeof ChangePlanInput>;

/** The data directory must fit the target plan's disk with this much room to spare. */
export const diskMargin = 0.2;

/**
 * What a client may wait for a connection (held by the gateway, not refused): a one-node change is a
 * shutdown and a start on the new settings; a rolling one a switchover, plus a restart of the new primary
 * when the plan lowers max_connections (a standby may not run below its primary). Measured by
 * `npm run bench:plan-change` (bench/RESULTS.md); rounded up.
 */
export const expectedRestartSeconds = 1;
export const expectedSwitchoverSeconds = 1;

/** The steps the ChangePlan workflow runs, as a user reads them. */
export function planChangeSteps(from: Plan, to: Plan): string[] {
  const before = postgresSettings(from);
  const after = postgresSettings(to);
  const changed = Object.keys(after).filter((name) => before[name] !== after[name]).map((name) => `${name} ${before[name]} → ${after[name]}`);
  const settings = changed.length ? ` (${changed.join(', ')})` : '';
  const rolling = from.nodes > 1 && to.nodes > 1;
  return [
    'check disk and connections against the target plan on the live server',
    ...(from.nodes > 1 && to.nodes === 1 ? ['remove the replica: stop it, drop its replication slot on the primary'] : []),
    ...(rolling
      ? [`restart the replica with the target plan's settings${settings}; the primary keeps serving`,
        'switch over: wait until the replica has caught up, hold new connections at the gateway, shut the primary down '
        + 'cleanly, promote the replica once it has replayed every commit, send connections to it; the old primary '
        + 'follows it as the replica',
        "restart the old primary (now the replica) with the target plan's settings, and the new primary only if a "
        + 'setting it must lower needs it (max_connections); same URL']
      : [`restart the server with the target plan's settings${settings}; same URL (new connections wait at the gateway)`]),
    'wait until the server accepts connections',
    ...(from.nodes === 1 && to.nodes > 1
      ? ['add a streaming replica: a copy of the primary (low-level backup API) streaming from it through a replication slot',
        "wait until the replica has replayed all the primary's WAL (lag 0)"]
      : []),
    "verify the server's settings are the target plan's",
    `record ${to.id} as the plan (billing event dbplane.database.plan-changed)`,
  ];
}

/** The target plan, or a 422 listing the valid ones at `pointer`. */
export function targetPlan(id: string, pointer: string): Plan {
  const plan = findPlan(id);
  if (!plan) {
    throw new Unprocessable(`plan ${id} does not exist`, { errors: [{ pointer, detail: `one of: ${planIds.join(', ')}` }] });
  }
  return plan;
}

/** Why the live server cannot move to `to`: its data would not fit the plan's disk with the margin, or it has more client connections than the plan allows. */
export function usageProblems(usage: InstanceUsage, to: Plan): string[] {
  const problems: string[] = [];
  const diskBytes = to.diskGb * 1024 ** 3;
  if (usage.diskBytes * (1 + diskMargin) > diskBytes) {
    problems.push(`the database uses ${usage.diskBytes} bytes of disk; ${to.id} holds ${diskBytes} bytes, which leaves less than a ${diskMargin * 100}% margin`);
  }
  if (usage.connections > to.maxConnections) {
    problems.push(`the database has ${usage.connections} client connections; ${to.id} allows ${to.maxConnections}`);
  }
  return problems;
}

/** Every reason the change cannot start now (the lock is checked again, atomically, when it starts). */
async function planChangeProblems(agent: AgentClient, database: Database, to: Plan): Promise<string[]> {
  if (database.plan === to.id) return [`the database is already on ${to.id}`];
  if (database.status !== 'running') return [`the database is ${database.status}; a plan change needs it running`];
  // Its server may be restarting under the other operation: no usage to read until it has finished.
  if (database.activeOperation) return [`operation ${database.activeOperation} is in progress`];
  return usageProblems(await agent.usage(database.id), to);
}

/** What a change to `planId` would do and whether it may start now; changes nothing. */
export async function previewPlanChange(deps: Pick<PlanDeps, 'store' | 'agent'>, caller: Caller, idOrName: string, planId: string) {
  const database = await findDatabase(deps.store, caller, idOrName);
  const to = targetPlan(planId, '/query/plan');
  const from = findPlan(database.plan)!;
  const reasons = await planChangeProblems(deps.agent, database, to);
  return {
    allowed: reasons.length === 0,
    reasons,
    from: database.plan,
    to: to.id,
    steps: planChangeSteps(from, to),
    expectedUnavailabilitySeconds: from.nodes > 1 && to.nodes > 1 ? expectedSwitchoverSeconds : expectedRestartSeconds,
  };
}

/**
 * `when: now` starts a ChangePlan operation (it takes the database's lock: 409 while another runs);
 * `when: maintenance_window` only records the request on the database. Either way the pre-checks
 * run first and refuse with a 422 giving every reason.
 */
export async function requestPlanChange(deps: PlanDeps, caller: Caller, idOrName: string, body: ChangePlanBody): Promise<{ database: Database; operation?: Operation }> {
  const database = await findDatabase(deps.store, caller, idOrName);
  const to = targetPlan(body.plan, '/body/plan');
  // A busy database is a 409, not a 422; the store checks the lock again, atomically, when the operation starts.
  if (database.activeOperation && database.plan !== to.id) throw new OperationInProgress(database.activeOperation);
  const problems = await planChangeProblems(deps.agent, database, to).catch(async (error: unknown) => {
    // A concurrent change may have taken the lock since, and be restarting the server under us.
    const current = await deps.store.getDatabase(database.id);
    if (current?.activeOperation) throw new OperationInProgress(current.activeOperation);
    throw error;
  });
  if (problems.length > 0) {
    throw new Unprocessable(problems.join('; '), { errors: problems.map((detail) => ({ pointer: '/body/plan', detail })) });
  }
  const at = (deps.now ?? (() => new Date()))().toISOString();
  if (body.when === 'maintenance_window') {
    return { database: await deps.store.setPendingChange(database.id, { pendingPlanChange: { plan: to.id, requestedAt: at } }) };
  }
  const input: ChangePlanInput = { fromPlan: database.plan, toPlan: to.id };
  return startOnRunning(deps, caller, database, { kind: 'change_plan', workflow: 'ChangePlan', input, at });
}
