import { type Deps, findDatabase, startOnRunning } from './databases.ts';
import { OperationInProgress } from './errors.ts';
import type { Caller, Database, Operation } from './model.ts';
import type { ChangePlanInput } from './plans.ts';

/**
 * A restart to apply settings (run by maintenance): the database's servers restart on the settings of record, its
 * plan's, the least disruptive way (the Restart workflow); a server already on them is left running. Its input is a
 * plan change's to the same plan, so the plan change's steps (replica first, switchover, the old primary) run it.
 */
export async function requestRestart(deps: Deps, caller: Caller, idOrName: string): Promise<{ database: Database; operation: Operation }> {
  const database = await findDatabase(deps.store, caller, idOrName);
  if (database.activeOperation) throw new OperationInProgress(database.activeOperation);
  const input: ChangePlanInput = { fromPlan: database.plan, toPlan: database.plan };
  const at = (deps.now ?? (() => new Date()))().toISOString();
  return startOnRunning(deps, caller, database, { kind: 'restart', workflow: 'Restart', input, at });
}
