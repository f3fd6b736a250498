import { findPlan, postgresSettings } from './catalog.ts';
import type { AgentClient } from './agent-client.ts';
import { InstanceFailed } from './errors.ts';
import type { EventPublisher } from './events.ts';
import type { Database, DatabaseStatus, Operation } from './model.ts';
import type { StepInput } from './steps.ts';
import type { Store } from './store.ts';

/** What the workflows' steps do, as plain functions of their dependencies. */

export interface StepDeps {
  store: Store;
  agent: AgentClient;
  events: EventPublisher;
}

async function load(store: Store, input: StepInput): Promise<{ operation: Operation; database: Database }> {
  const [operation, database] = await Promise.all([
    store.getDatabaseOperation(input.databaseId, input.operationId),
    store.getDatabase(input.databaseId),
  ]);
  if (!operation || !database) throw new Error(`operation ${input.operationId} or database ${input.databaseId} not found`);
  return { operation, database };
}

export async function beginOperation(store: Store, input: StepInput): Promise<void> {
  const { operation } = await load(store, input);
  if (operation.status === 'pending') await store.setOperationFields(operation, { status: 'running', updatedAt: new Date().toISOString() });
}

export async function ensureInstance(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { database } = await load(deps.store, input);
  const plan = findPlan(database.plan);
  if (!plan) throw new Error(`unknown plan ${database.plan}`);
  await deps.agent.ensureInstance(database.id, {
    engine: database.engine,
    version: database.version,
    role: { name: database.username, scramVerifier: database.passwordVerifier },
    database: database.databaseName,
    settings: postgresSettings(plan),
  });
}

export async function checkInstance(agent: AgentClient, input: StepInput): Promise<{ ready: boolean; attempts: number }> {
  const instance = await agent.getInstance(input.databaseId);
  if (!instance) throw new InstanceFailed('the server is gone from its host');
  if (instance.status === 'failed') throw new InstanceFailed(instance.reason ?? 'the server failed to start');
  return { ready: instance.status === 'running', attempts: (input.health?.attempts ?? 0) + 1 };
}

export async function removeInstance(agent: AgentClient, input: StepInput): Promise<void> {
  await agent.deleteInstance(input.databaseId);
}

/** Ends the operation successfully and applies its result to the database, releasing the lock. */
export async function completeOperation(deps: StepDeps, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const at = new Date().toISOString();
  let changes: Parameters<Store['finishOperation']>[2];
  switch (operation.kind) {
    case 'provision': {
      const instance = await deps.agent.getInstance(database.id);
      if (!instance) throw new InstanceFailed('the server is gone from its host');
      changes = { status: 'running', endpoint: { host: instance.host, port: instance.port } };
      break;
    }
    case 'deprovision':
      changes = { status: 'deleted', deleted: { accountId: database.accountId, name: database.name } };
      break;
  }
  await finish(deps, operation, database, { status: 'succeeded', at }, changes);
}

/** Ends the operation as failed with the caught error's reason, releasing the lock. */
export async function failOperation(deps: Omit<StepDeps, 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const reason = failureReason(input.error);
  await finish(deps, operation, database, { status: 'failed', error: reason, at: new Date().toISOString() }, { status: 'failed', statusReason: reason });
}

async function finish(
  deps: Omit<StepDeps, 'agent'>,
  operation: Operation,
  database: Database,
  outcome: { status: Operation['status']; error?: string; at: string },
  changes: Parameters<Store['finishOperation']>[2],
): Promise<void> {
  // A retry after the lock was released finds nothing to do, and sends no second event.
  if (!(await deps.store.finishOperation(operation, outcome, changes))) return;
  await deps.events.operationFinished({ ...operation, status: outcome.status, error: outcome.error, finishedAt: outcome.at });
  await deps.events.databaseStatusChanged(database, database.status, changes.status as DatabaseStatus, operation.id);
}

/** Step Functions puts a Lambda error's message inside `Cause` as JSON (`errorMessage`); show that. */
export function failureReason(error: StepInput['error']): string {
  if (!error) return 'unknown error';
  try {
    const cause = JSON.parse(error.Cause ?? '') as { errorMessage?: string };
    if (cause.errorMessage) return `${error.Error}: ${cause.errorMessage}`;
  } catch {
    // Not JSON: a plain message.
  }
  return error.Cause ? `${error.Error}: ${error.Cause}` : error.Error;
}

export interface ReaperDeps extends StepDeps {
  /** The execution's status, or undefined when Step Functions does not know it. */
  executionStatus: (executionArn: string) => Promise<string | undefined>;
}

/** Operations without an execution get this long to start one before they count as lost. */
export const unstartedGraceMs = 60_000;

/**
 * Ends an operation whose execution is gone (the service was killed, the execution failed outside a
 * Catch, or it never started): cleans up like the workflow's own failure path and releases the lock.
 * Returns whether it did.
 */
export async function reapOperation(deps: ReaperDeps, ref: Pick<Operation, 'id' | 'databaseId'>, now: Date): Promise<boolean> {
  const operation = await deps.store.getDatabaseOperation(ref.databaseId, ref.id);
  if (!operation || operation.finishedAt) return false;
  if (operation.executionArn) {
    if ((await deps.executionStatus(operation.executionArn)) === 'RUNNING') return false;
  } else if (now.getTime() - Date.parse(operation.createdAt) < unstartedGraceMs) {
    return false;
  }
  const input = { operationId: operation.id, databaseId: operation.databaseId };
  if (operation.kind === 'provision') await removeInstance(deps.agent, input);
  await failOperation(deps, { ...input, error: { Error: 'ExecutionLost', Cause: 'the workflow stopped before the operation finished; cleaned up' } });
  return true;
}
