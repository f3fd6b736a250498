import { z } from 'zod';
import { maxJobWaitSeconds, TableStats, type Cutover, type EnsureInstance, type StartRestore } from './agent-api.ts';
import { findPlan, postgresSettings, sameSetting } from './catalog.ts';
import type { AgentClient } from './agent-client.ts';
import { backupOutcome, DrillInput, RestoreInput } from './backups.ts';
import { BackupFailed, InstanceFailed, PlanNotApplied, RestoreFailed, Unprocessable, UpgradeNotApplied } from './errors.ts';
import type { EventPublisher } from './events.ts';
import { type KeyWrapper, newWrappedDataKey } from './keys.ts';
import type { Database, DatabaseStatus, Operation } from './model.ts';
import { ChangePlanInput, usageProblems } from './plans.ts';
import type { StepInput } from './steps.ts';
import { checkedMethod, UpgradeInput, UpgradeStrategy } from './upgrades.ts';
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

/** Creates the database's data key (wrapped) unless it has one; a retry finds the first one. */
export async function createDataKey(deps: { store: Store; keys: KeyWrapper }, input: StepInput): Promise<void> {
  const { database } = await load(deps.store, input);
  if (database.dataKeyVersion) return;
  await deps.store.putDataKey({ databaseId: database.id, version: 1, wrapped: await newWrappedDataKey(deps.keys, database.id), createdAt: new Date().toISOString() });
}

async function wrappedKeyOf(store: Store, database: Pick<Database, 'id' | 'dataKeyVersion'>) {
  const key = database.dataKeyVersion ? await store.getDataKey(database.id, database.dataKeyVersion) : undefined;
  if (!key) throw new Error(`database ${database.id} has no data key`);
  return { version: key.version, wrapped: key.wrapped };
}

/** What the agent needs to run the database's server: version, role, settings and disk quota from the plan (its own, or `planId`), data key. */
async function instanceSpec(store: Store, database: Database, planId = database.plan): Promise<EnsureInstance> {
  const plan = findPlan(planId);
  if (!plan) throw new Error(`unknown plan ${planId}`);
  return {
    engine: database.engine,
    version: database.version,
    role: { name: database.username, scramVerifier: database.passwordVerifier },
    database: database.databaseName,
    settings: postgresSettings(plan),
    dataKey: await wrappedKeyOf(store, database),
    diskQuotaBytes: plan.diskGb * 1024 ** 3,
  };
}

export async function ensureInstance(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { database } = await load(deps.store, input);
  await deps.agent.ensureInstance(database.id, await instanceSpec(deps.store, database));
}

// ---- plan changes (one node): precheck, resize, verify; revert on any failure

/** Runs the plan change's usage checks again, against the live server. */
export async function precheckPlan(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const { toPlan } = ChangePlanInput.parse(operation.input);
  const problems = usageProblems(await deps.agent.usage(database.id), findPlan(toPlan)!);
  if (problems.length > 0) throw new Unprocessable(problems.join('; '));
}

// ---- upgrades (minor: a restart on other binaries; major: blue/green): precheck, the path of the strategy, verify

/** What PrecheckUpgrade leaves at `$.precheck`: the path the upgrade takes, and every user table for VerifyUpgrade. */
export const UpgradePrecheck = z.object({ strategy: UpgradeStrategy, tables: TableStats });
export type UpgradePrecheck = z.infer<typeof UpgradePrecheck>;

/** Runs the upgrade's blocking checks again on the live server, and lists every user table for VerifyUpgrade. */
export async function precheckUpgrade(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<UpgradePrecheck> {
  const { operation, database } = await load(deps.store, input);
  const { toVersion, strategy } = UpgradeInput.parse(operation.input);
  const blocking = (await deps.agent.upgradeChecks(database.id, toVersion)).checks
    .filter((c) => c.severity === 'blocking' && c.appliesTo.includes(checkedMethod(strategy)));
  if (blocking.length > 0) throw new Unprocessable(blocking.map((c) => c.detail).join('; '));
  return { strategy, tables: await deps.agent.tableStats(database.id) };
}

/**
 * The server says it runs the target version, and every user table counted before is still there and
 * reads in full (a sequential count). Row counts are not compared here: clients write during an upgrade (a
 * major upgrade's cutover compared them on both servers while clients were held).
 */
export async function verifyUpgrade(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput & { precheck?: unknown }): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const { toVersion } = UpgradeInput.parse(operation.input);
  const [usage, after] = await Promise.all([deps.agent.usage(database.id), deps.agent.tableStats(database.id)]);
  const wrong: string[] = [];
  if (usage.serverVersion.split(' ')[0] !== toVersion) wrong.push(`the server says ${usage.serverVersion}, not ${toVersion}`);
  const before = UpgradePrecheck.parse(input.precheck).tables;
  const key = (t: TableStats['tables'][number]) => `${t.database}.${t.schema}.${t.name}`;
  const readable = new Set(after.tables.map(key));
  const missing = before.tables.map(key).filter((table) => !readable.has(table));
  if (missing.length > 0) wrong.push(`tables gone: ${missing.join(', ')}`);
  if (wrong.length > 0) throw new UpgradeNotApplied(wrong.join('; '));
}

/** A major upgrade: the agent builds the new server beside the old one and subscribes it (named by the operation: a retry finds it). */
export async function startBlueGreen(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  await deps.agent.startBlueGreen(database.id, { id: operation.id, version: UpgradeInput.parse(operation.input).toVersion });
}

/** Ready once the new server has copied every table and caught up; a failed one (its server, or replication that keeps failing) fails the step. */
export async function checkBlueGreen(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput & { blueGreenProgress?: PollResult }): Promise<PollResult> {
  const attempts = (input.blueGreenProgress?.attempts ?? 0) + 1;
  const progress = await deps.agent.getBlueGreen(input.databaseId, input.operationId, maxJobWaitSeconds);
  if (!progress) throw new UpgradeNotApplied('the new server is gone from its host');
  if (progress.status === 'failed') throw new UpgradeNotApplied(progress.reason ?? 'the new server failed');
  return { ready: progress.status === 'ready', attempts };
}

/**
 * Clients move to the new server (the agent compares every table's row count on both while they are held: a
 * difference keeps them on the old one and fails the step). What it checked is recorded on the operation and
 * left at `$.cutover`: from there on the database runs on the new major.
 */
export async function cutover(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<Cutover> {
  const { operation, database } = await load(deps.store, input);
  const { cutover: done } = await deps.agent.cutover(database.id, operation.id);
  if (!done) throw new UpgradeNotApplied('the host answered the cutover without its result');
  await deps.store.setOperationResult(operation, { cutoverAt: done.at, heldMs: done.heldMs, tables: done.tables.tables.length, rows: done.tables.totalRows });
  return done;
}

/**
 * After the cutover, a failure: clients go back to the old server, which followed the new one since, with every write
 * made meanwhile. Answers null, left at `$.cutover`: the database runs on its old version again (see failOperation).
 */
export async function rollBackBlueGreen(deps: Pick<StepDeps, 'agent'>, input: StepInput): Promise<null> {
  await deps.agent.rollBackBlueGreen(input.databaseId, input.operationId);
  return null;
}

/** Before the cutover, the new server goes; the database never left the old one. */
export async function abandonBlueGreen(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  await deps.agent.abandonBlueGreen(input.databaseId, input.operationId);
}

/** The agent restarts every server not yet on the target spec (same endpoint); the poll that follows waits for health. */
export async function applyToInstance(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  await deps.agent.ensureInstance(database.id, await targetSpec(deps.store, operation, database));
}

/** The server reads back every setting of the target plan, and the database's URL still reaches it. */
export async function verifyPlan(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const expected = postgresSettings(findPlan(ChangePlanInput.parse(operation.input).toPlan)!);
  const [usage, instance] = await Promise.all([deps.agent.usage(database.id), deps.agent.getInstance(database.id)]);
  const wrong = Object.entries(expected)
    .filter(([name, value]) => !sameSetting(usage.settings[name] ?? '', value))
    .map(([name, value]) => `${name} is ${usage.settings[name] ?? 'unset'}, not ${value}`);
  // A database provisioned before the gateway existed still names its server's port directly.
  if (instance && database.endpoint && ![instance.gatewayPort, instance.port].includes(database.endpoint.port)) {
    wrong.push(`the database's port ${database.endpoint.port} is neither its gateway's (${instance.gatewayPort}) nor its server's (${instance.port})`);
  }
  if (wrong.length > 0) throw new PlanNotApplied(wrong.join('; '));
}

/** The plan's node count: 2 means a streaming replica beside the primary. */
const nodesOf = (planId: string) => findPlan(planId)?.nodes ?? 1;

/** The plan the operation brings the database to: a plan change's target, or the plan it is provisioned on. */
const targetPlanOf = (operation: Operation, database: Database) =>
  (operation.kind === 'change_plan' ? ChangePlanInput.parse(operation.input).toPlan : database.plan);

/**
 * A change rolls when the database has two nodes before and after it (between business plans, or an
 * upgrade of a business database): the replica first, then a switchover, then the old primary.
 */
function isRolling(operation: Operation, database: Database): boolean {
  if (operation.kind === 'upgrade') return nodesOf(database.plan) === 2;
  const { fromPlan, toPlan } = ChangePlanInput.parse(operation.input);
  return nodesOf(fromPlan) === 2 && nodesOf(toPlan) === 2;
}

/** The spec the operation brings the server to: the target plan's settings, or the target version. */
async function targetSpec(store: Store, operation: Operation, database: Database): Promise<EnsureInstance> {
  if (operation.kind === 'upgrade') return { ...(await instanceSpec(store, database)), version: UpgradeInput.parse(operation.input).toVersion };
  return instanceSpec(store, database, ChangePlanInput.parse(operation.input).toPlan);
}

/** Rolling: the replica restarts on the target spec while the primary keeps serving on the old one. */
export async function applyToReplica(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  if (isRolling(operation, database)) await deps.agent.ensureInstance(database.id, await targetSpec(deps.store, operation, database), 'replica');
}

/**
 * Rolling: the replica, on the target spec, becomes the primary behind the same endpoint (the agent waits
 * for it to catch up, holds new connections, promotes it once it has every commit); the old primary
 * rejoins as its replica and gets the target spec next. Named by the operation, so a retried call does not switch back.
 */
export async function switchover(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  if (isRolling(operation, database)) await deps.agent.switchover(database.id, { id: operation.id });
}

/** To a 1-node plan: the replica goes before the primary is resized (a no-op when there is none). */
export async function removeReplica(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  if (nodesOf(ChangePlanInput.parse(operation.input).toPlan) === 1) await deps.agent.deleteReplica(database.id);
}

/** On a 2-node plan: the agent copies the primary into a streaming replica (if it has none); CheckReplica waits for it. */
export async function addReplica(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  if (nodesOf(targetPlanOf(operation, database)) === 2) await deps.agent.ensureReplica(database.id);
}

/**
 * Ready once the replica runs and has replayed every byte of WAL the primary wrote (at once on a 1-node plan).
 * Each check waits on the agent for that, up to maxJobWaitSeconds (long poll).
 */
export async function checkReplica(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput & { replicaProgress?: PollResult }): Promise<PollResult> {
  const attempts = (input.replicaProgress?.attempts ?? 0) + 1;
  const { operation, database } = await load(deps.store, input);
  if (nodesOf(targetPlanOf(operation, database)) === 1) return { ready: true, attempts };
  return { ready: await replicaCaughtUp(deps.agent, database.id, maxJobWaitSeconds), attempts };
}

/** Whether the database's replica runs and has replayed every byte of WAL its primary wrote; throws if it is gone or failed. */
async function replicaCaughtUp(agent: AgentClient, databaseId: string, waitSeconds = 0): Promise<boolean> {
  const instance = await agent.getInstance(databaseId, waitSeconds);
  const replica = instance?.nodes?.find((n) => n.role === 'replica');
  if (!replica) throw new InstanceFailed('the replica is gone from its host');
  if (replica.status === 'failed') throw new InstanceFailed('the replica failed to start');
  return replica.status === 'running' && replica.lagBytes === 0;
}

/** How long RevertPlan waits for the server, then its replica, to come back on the old settings (within the step's 60 s). */
const revertHealthMs = 45_000;

/**
 * Puts the previous spec back (the plan or version of record: it changes only when the operation
 * succeeds) and waits until the server runs on it, then its node count (the replica added or removed,
 * and waited for until caught up); a no-op when nothing changed.
 */
export async function revertChange(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const fromPlan = operation.kind === 'change_plan' ? ChangePlanInput.parse(operation.input).fromPlan : database.plan;
  await deps.agent.ensureInstance(database.id, await instanceSpec(deps.store, database, fromPlan));
  const deadline = Date.now() + revertHealthMs;
  const until = async (what: string, ready: () => Promise<boolean>) => {
    while (!(await ready())) {
      if (Date.now() > deadline) throw new InstanceFailed(`${what} did not come back on ${database.plan} (${database.version}) within ${revertHealthMs / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  };
  await until('the server', async () => (await checkInstance(deps.agent, input)).ready);
  if (nodesOf(fromPlan) === 1) return deps.agent.deleteReplica(database.id);
  await deps.agent.ensureReplica(database.id);
  await until('the replica', () => replicaCaughtUp(deps.agent, database.id));
}

/** Where a poll stands: `attempts` counts the checks so a state machine can bound the loop. */
export interface PollResult {
  ready: boolean;
  attempts: number;
}

/** Starts the backup the operation takes first (`input.backupId`); operations without one go straight on. */
export async function startBackup(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation } = await load(deps.store, input);
  const backupId = operation.input.backupId as string | undefined;
  if (!backupId) return;
  const backup = await deps.store.getBackup(operation.databaseId, backupId);
  if (!backup) throw new Error(`backup ${backupId} is not recorded`);
  await deps.agent.startBackup(operation.databaseId, backupId, { kind: backup.kind });
}

/**
 * Polls the operation's backup, waiting on the agent until it ends (long poll, so the end is seen at
 * once); records it once it completed; a failed backup fails the step.
 */
export async function checkBackup(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput & { backupProgress?: PollResult }): Promise<PollResult> {
  const attempts = (input.backupProgress?.attempts ?? 0) + 1;
  const { operation } = await load(deps.store, input);
  const backupId = operation.input.backupId as string | undefined;
  if (!backupId) return { ready: true, attempts };
  const job = await deps.agent.getBackup(operation.databaseId, backupId, maxJobWaitSeconds);
  if (!job) throw new BackupFailed(`backup ${backupId} is unknown to the host`);
  if (job.status === 'failed') throw new BackupFailed(`backup ${backupId} failed: ${job.reason ?? 'no reason given'}`);
  if (job.status === 'running') return { ready: false, attempts };
  const backup = await deps.store.getBackup(operation.databaseId, backupId);
  if (backup && backup.status !== 'completed') await deps.store.putBackup({ ...backup, ...backupOutcome(job) });
  return { ready: true, attempts };
}

/** Starts the restore the operation asks for: in place, or into this new database from its source's archive. */
export async function startRestore(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const restore = RestoreInput.parse(operation.input);
  const source = restore.into === 'same' ? database : await deps.store.getDatabase(restore.sourceDatabaseId);
  const backup = source && await deps.store.getBackup(source.id, restore.sourceBackupId);
  if (!source || !backup) throw new RestoreFailed(`backup ${restore.sourceBackupId} of database ${restore.sourceDatabaseId} is gone`);
  const request: StartRestore = {
    mode: restore.into === 'same' ? 'in_place' : 'new',
    source: { databaseId: source.id, backupId: backup.id, dataKey: await wrappedKeyOf(deps.store, { id: source.id, dataKeyVersion: backup.keyVersion ?? source.dataKeyVersion }) },
    pointInTime: restore.pointInTime,
    spec: restore.into === 'new' ? await instanceSpec(deps.store, database) : undefined,
  };
  await deps.agent.startRestore(database.id, operation.id, request);
}

/** Polls the restore like checkBackup (long poll); a failed restore fails the step. */
export async function checkRestore(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput & { restoreProgress?: PollResult }): Promise<PollResult> {
  const attempts = (input.restoreProgress?.attempts ?? 0) + 1;
  const { operation } = await load(deps.store, input);
  const job = await deps.agent.getRestore(restoreTarget(operation), input.operationId, maxJobWaitSeconds);
  if (!job) throw new RestoreFailed('the restore is unknown to the host');
  if (job.status === 'failed') throw new RestoreFailed(job.reason ?? 'the restore failed');
  return { ready: job.status === 'completed', attempts };
}

/** With `purge`: every backup and WAL segment goes, then the data key, after which no copy could be decrypted anyway. */
export async function purgeBackups(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation } = await load(deps.store, input);
  if (operation.input.purge !== true) return;
  await deps.agent.purgeArchive(operation.databaseId);
  for (const backup of await deps.store.listBackups(operation.databaseId)) await deps.store.deleteBackup(operation.databaseId, backup.id);
  await deps.store.deleteDataKeys(operation.databaseId);
}

/** Where a restore operation restores to: the database's own instance, or a drill's scratch server. */
function restoreTarget(operation: Operation): string {
  return operation.kind === 'drill' ? DrillInput.parse(operation.input).scratchInstanceId : operation.databaseId;
}

/** A drill restores the backup into a scratch server that has no data key (it archives nothing) and the database's role. */
export async function startDrill(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const drill = DrillInput.parse(operation.input);
  const backup = await deps.store.getBackup(database.id, drill.drilledBackupId);
  if (!backup) throw new RestoreFailed(`backup ${drill.drilledBackupId} is gone`);
  const { dataKey: _none, ...spec } = await instanceSpec(deps.store, database);
  // The drill's own clock: its operation may have been created for another instant (an injected schedule time).
  if (!operation.result?.restoreStartedAt) await deps.store.setOperationResult(operation, { restoreStartedAt: new Date().toISOString() });
  await deps.agent.startRestore(drill.scratchInstanceId, operation.id, {
    mode: 'new',
    source: { databaseId: database.id, backupId: backup.id, dataKey: await wrappedKeyOf(deps.store, { id: database.id, dataKeyVersion: backup.keyVersion }) },
    spec,
  });
}

/**
 * Checks the restored scratch server: it accepts connections and every user table reads in full.
 * Records what it found and the time from the drill's start to here (the RTO of this backup).
 */
export async function verifyDrill(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation } = await load(deps.store, input);
  const drill = DrillInput.parse(operation.input);
  const stats = await deps.agent.tableStats(drill.scratchInstanceId);
  const startedAt = String(operation.result?.restoreStartedAt ?? operation.createdAt);
  await deps.store.setOperationResult(operation, {
    restoreStartedAt: startedAt,
    backupId: drill.drilledBackupId,
    tables: stats.tables.length,
    totalRows: stats.totalRows,
    recoverySeconds: Math.round((Date.now() - Date.parse(startedAt)) / 100) / 10,
  });
}

export async function removeScratch(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation } = await load(deps.store, input);
  await deps.agent.deleteInstance(DrillInput.parse(operation.input).scratchInstanceId);
}

/** A drill ends without touching the database: only its operation, and an alarm event when it failed. */
async function finishDrill(deps: Omit<StepDeps, 'agent'>, operation: Operation, outcome: { status: Operation['status']; error?: string; at: string }) {
  if (!(await deps.store.finishUnlockedOperation(operation, outcome))) return;
  await deps.events.operationFinished({ ...operation, ...outcome, finishedAt: outcome.at });
  if (outcome.status !== 'succeeded') await deps.events.restoreDrillFailed(operation, outcome.error ?? 'unknown error');
}

/** A restore into a new database that failed leaves nothing behind; in place, the agent has already put the old data back. */
export async function abandonRestore(deps: Pick<StepDeps, 'store' | 'agent'>, input: StepInput): Promise<void> {
  const { operation } = await load(deps.store, input);
  if (RestoreInput.parse(operation.input).into === 'new') await deps.agent.deleteInstance(operation.databaseId);
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
  if (operation.kind === 'drill') return finishDrill(deps, operation, { status: 'succeeded', at });
  const newServer = async (): Promise<FinishChanges> => {
    const instance = await deps.agent.getInstance(database.id);
    if (!instance) throw new InstanceFailed('the server is gone from its host');
    // Clients reach the database through its gateway, whatever port the server itself listens on.
    return { status: 'running', endpoint: { host: instance.host, port: instance.gatewayPort } };
  };
  const changes: Record<Operation['kind'], () => Promise<FinishChanges>> = {
    provision: newServer,
    deprovision: async () => ({ status: 'deleted', deleted: { accountId: database.accountId, name: database.name, tags: database.tags }, purged: operation.input.purge === true }),
    backup: async () => ({ status: 'running' }),
    restore: async () => (RestoreInput.parse(operation.input).into === 'new' ? newServer() : { status: 'running' }),
    drill: async () => ({ status: database.status }),
    change_plan: async () => ({ status: 'running', plan: ChangePlanInput.parse(operation.input).toPlan }),
    upgrade: async () => {
      const { toVersion, strategy } = UpgradeInput.parse(operation.input);
      // Only now does the old server stop following the new one: until here a failure rolls back (rollBackBlueGreen).
      if (strategy === 'logical') await deps.agent.finishBlueGreen(database.id, operation.id);
      return { status: 'running', version: toVersion };
    },
    restart: async () => ({ status: 'running' }),
  };
  if (!(await finish(deps, operation, database, { status: 'succeeded', at }, await changes[operation.kind]()))) return;
  if (operation.kind === 'change_plan') await deps.events.planChanged(operation, { from: database.plan, to: ChangePlanInput.parse(operation.input).toPlan, at });
  if (operation.kind === 'upgrade') await deps.events.upgraded(operation, { from: database.version, to: UpgradeInput.parse(operation.input).toVersion, at });
}

type FinishChanges = Parameters<Store['finishOperation']>[2];

/** Ends the operation as failed with the caught error's reason, releasing the lock. */
export async function failOperation(deps: Omit<StepDeps, 'agent'>, input: StepInput): Promise<void> {
  const { operation, database } = await load(deps.store, input);
  const reason = failureReason(input.error ?? input.cleanupError);
  const at = new Date().toISOString();
  if (operation.kind === 'drill') return finishDrill(deps, operation, { status: 'failed', error: reason, at });
  // A backup that did not complete is recorded as failed with the operation, never left `running`.
  const backupId = operation.input.backupId as string | undefined;
  const backup = backupId ? await deps.store.getBackup(operation.databaseId, backupId) : undefined;
  const failedBackup = backup && backup.status !== 'completed'
    ? [{ Put: { TableName: deps.store.table, Item: deps.store.backupItem({ ...backup, status: 'failed', reason, finishedAt: at }) } }]
    : [];
  // After a major upgrade's cutover the database runs on the new major unless it was rolled back ($.cutover null then).
  const cutOver = operation.kind === 'upgrade' && input.cutover !== undefined && input.cutover !== null;
  // The database was not touched by a failed backup, nor by a failed restore in place (the host put the old data back),
  // nor by a failed plan change or upgrade whose revert worked (the server runs on its previous plan and version).
  const rolledBack = (operation.kind === 'restore' && RestoreInput.parse(operation.input).into === 'same')
    || ((operation.kind === 'change_plan' || operation.kind === 'upgrade' || operation.kind === 'restart') && !input.cleanupError && !cutOver);
  const untouched = operation.kind === 'backup' || rolledBack;
  await finish(
    deps, operation, database,
    { status: rolledBack ? 'rolled_back' : 'failed', error: reason, at },
    { ...(untouched ? { status: 'running' } : { status: 'failed', statusReason: reason }), ...(cutOver ? { version: UpgradeInput.parse(operation.input).toVersion } : {}) },
    failedBackup,
  );
}

async function finish(
  deps: Omit<StepDeps, 'agent'>,
  operation: Operation,
  database: Database,
  outcome: { status: Operation['status']; error?: string; at: string },
  changes: FinishChanges,
  extraItems: Parameters<Store['finishOperation']>[3] = [],
): Promise<boolean> {
  // A retry after the lock was released finds nothing to do, and sends no second event.
  if (!(await deps.store.finishOperation(operation, outcome, changes, extraItems))) return false;
  await deps.events.operationFinished({ ...operation, status: outcome.status, error: outcome.error, finishedAt: outcome.at });
  if (database.status !== changes.status) {
    await deps.events.databaseStatusChanged(database, database.status, changes.status as DatabaseStatus, operation.id);
  }
  return true;
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
  const blueGreen = operation.kind === 'upgrade' && UpgradeInput.parse(operation.input).strategy === 'logical';
  // A major upgrade that was not cut over is abandoned; one that was is rolled back, or stays on the new major once finished.
  const upgrade = blueGreen ? await deps.agent.getBlueGreen(operation.databaseId, operation.id) : undefined;
  const rolledBack = upgrade?.status === 'cut_over' && await rollBackBlueGreen(deps, input).then(() => true, () => false);
  const cutOver = rolledBack || upgrade?.status === 'rolled_back' ? undefined : upgrade?.cutover;
  if (operation.kind === 'provision') await removeInstance(deps.agent, input);
  if (operation.kind === 'restore') await abandonRestore(deps, input);
  if (operation.kind === 'drill') await removeScratch(deps, input);
  if (blueGreen && !upgrade?.cutover) await abandonBlueGreen(deps, input);
  if (operation.kind === 'change_plan' || operation.kind === 'restart' || (operation.kind === 'upgrade' && !blueGreen)) await revertChange(deps, input);
  await failOperation(deps, {
    ...input, ...(cutOver ? { cutover: cutOver } : {}),
    error: { Error: 'ExecutionLost', Cause: 'the workflow stopped before the operation finished; cleaned up' },
  });
  return true;
}
