import { type OfferedVersion, offeredVersions, resolveVersion } from './catalog.ts';
import type { WorkflowName } from './config.ts';
import type { InstanceNode } from './agent-api.ts';
import type { AgentClient } from './agent-client.ts';
import { AgentRefused, AgentUnavailable, NotFound, Unprocessable } from './errors.ts';
import type { EventPublisher } from './events.ts';
import { newId } from './ids.ts';
import type { MaintenanceRun } from './maintenance-model.ts';
import { randomDefaultWindow } from './maintenance-window.ts';
import type { Caller, Database, DatabaseStatus, Operation, OperationKind } from './model.ts';
import { randomInt } from 'node:crypto';
import { generatePassword, scramVerifier } from './scram.ts';
import type { Store } from './store.ts';
import type { Workflows } from './workflows.ts';

/** Databases: the domain behind the API handlers, free of HTTP and Lambda. */

export interface Deps {
  store: Store;
  workflows: Workflows;
  events: EventPublisher;
  now?: () => Date;
  /** A maintenance starting an operation: its window and clock, kept in the operation's input for its disruptive steps. */
  maintenanceRun?: MaintenanceRun;
}

/**
 * Its servers as its host reports them, for a database that has some (one with an endpoint); undefined
 * when the host does not answer: the database's record is shown without them rather than not at all.
 */
export async function databaseNodes(agent: Pick<AgentClient, 'getInstance'>, database: Database): Promise<InstanceNode[] | undefined> {
  if (!database.endpoint || database.status === 'deleted') return undefined;
  try {
    return (await agent.getInstance(database.id))?.nodes;
  } catch (error) {
    if (error instanceof AgentUnavailable || error instanceof AgentRefused) return undefined;
    throw error;
  }
}

/** A database of the caller's by id or name; anything else, including another account's, is a 404. */
export async function findDatabase(store: Store, caller: Caller, idOrName: string): Promise<Database> {
  const id = idOrName.startsWith('db-') ? idOrName : await store.findDatabaseIdByName(caller.accountId, idOrName);
  const database = id ? await store.getDatabase(id) : undefined;
  if (!database || database.accountId !== caller.accountId || database.status === 'deleted') {
    throw new NotFound(`no database "${idOrName}"`);
  }
  return database;
}

export async function hostVersions(store: Store, now: Date): Promise<OfferedVersion[]> {
  const hosts = await store.listHosts();
  const all = offeredVersions(hosts.flatMap((h) => h.versions), now);
  return all.filter((v, i) => all.findIndex((w) => w.version === v.version) === i);
}

export interface CreateDatabaseInput {
  name: string;
  engine: 'postgresql';
  version?: string;
  plan: string;
  tags?: string[];
}

export async function createDatabase(deps: Deps, caller: Caller, input: CreateDatabaseInput) {
  const now = (deps.now ?? (() => new Date()))();
  const offered = await hostVersions(deps.store, now);
  const version = resolveVersion(input.version, offered);
  if (!version) {
    const allowed = offered.map((v) => v.version).join(', ') || 'none (no host has reported yet)';
    throw new Unprocessable(`version ${input.version ?? '(default)'} is not offered; offered: ${allowed}`, {
      errors: [{ pointer: '/body/version', detail: `one of: ${allowed}` }],
    });
  }
  const { database, operation, password } = newDatabase(caller, input, version.version, now.toISOString(), 'provision', { ...input, version: version.version });
  await deps.store.createDatabase(database, operation);
  await deps.events.databaseStatusChanged(database, 'none', 'creating', operation.id);
  const started = await startWorkflow(deps, 'Provision', operation);
  return { database, operation: started, password };
}

/** A new database's daily backup hour: spread over the night in Europe (00:00-05:59 UTC), like RDS's random default window. */
export const defaultBackupHour = () => randomInt(0, 6);

/** A new database record (status `creating`), the operation that brings it up, and its password (shown once, kept nowhere). */
export function newDatabase(
  caller: Caller,
  input: Pick<CreateDatabaseInput, 'name' | 'engine' | 'plan' | 'tags'>,
  version: string,
  at: string,
  kind: OperationKind,
  operationInput: Record<string, unknown>,
) {
  const password = generatePassword();
  const id = newId('db');
  const roleName = input.name.replaceAll('-', '_');
  const operation = newOperation(id, caller.accountId, kind, operationInput, at);
  const database: Database = {
    id,
    accountId: caller.accountId,
    name: input.name,
    engine: input.engine,
    version,
    plan: input.plan,
    status: 'creating',
    username: roleName,
    databaseName: roleName,
    passwordVerifier: scramVerifier(password),
    activeOperation: operation.id,
    backupHour: defaultBackupHour(),
    maintenanceWindow: randomDefaultWindow(),
    ...(input.tags?.length ? { tags: input.tags } : {}),
    rev: 1,
    createdAt: at,
    updatedAt: at,
  };
  return { database, operation, password };
}

/** Replaces the database's tags (validated by Tags); the API shows them on the database. */
export async function setTags(store: Store, caller: Caller, idOrName: string, tags: string[]): Promise<Database> {
  return store.setTags(await findDatabase(store, caller, idOrName), tags);
}

/** Deprovisions; backups stay for their retention unless `purge`, which also destroys the data key (crypto-shredding). */
export async function deleteDatabase(deps: Deps, caller: Caller, idOrName: string, options: { purge?: boolean } = {}) {
  const database = await findDatabase(deps.store, caller, idOrName);
  const at = (deps.now ?? (() => new Date()))().toISOString();
  const operation = newOperation(database.id, caller.accountId, 'deprovision', { purge: options.purge ?? false }, at);
  await deps.store.startOperation(operation, ['running', 'failed'], 'deleting');
  await deps.events.databaseStatusChanged(database, database.status, 'deleting', operation.id);
  const started = await startWorkflow(deps, 'Deprovision', operation);
  return { database: { ...database, status: 'deleting' as DatabaseStatus, activeOperation: operation.id }, operation: started };
}

export function newOperation(databaseId: string, accountId: string, kind: OperationKind, input: Record<string, unknown>, at: string): Operation {
  return { id: newId('op'), databaseId, accountId, kind, status: 'pending', input, steps: [], createdAt: at, updatedAt: at };
}

/** Starts a long operation on a running database: takes its lock (409 while another runs), then starts its workflow. */
export async function startOnRunning(
  deps: Deps, caller: Caller, database: Database, start: { kind: OperationKind; workflow: WorkflowName; input: Record<string, unknown>; at: string },
): Promise<{ database: Database; operation: Operation }> {
  const input = deps.maintenanceRun ? { ...start.input, maintenance: deps.maintenanceRun } : start.input;
  const operation = newOperation(database.id, caller.accountId, start.kind, input, start.at);
  await deps.store.startOperation(operation, ['running'], 'running');
  return { database: { ...database, activeOperation: operation.id }, operation: await startWorkflow(deps, start.workflow, operation) };
}

export async function startWorkflow(deps: Deps, workflow: WorkflowName, operation: Operation): Promise<Operation> {
  const executionArn = await deps.workflows.start(workflow, { operationId: operation.id, databaseId: operation.databaseId });
  if (!executionArn) return operation;
  await deps.store.setOperationFields(operation, { executionArn });
  return { ...operation, executionArn };
}
