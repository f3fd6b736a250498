import { type LocalStateMachine, taskStates } from '../../local/template.ts';

/** The paths through a synthesized state machine, so tests can fault every step a run takes. */

type State = { Type: string; Next?: string; Default?: string; End?: boolean; Choices?: { Next: string }[]; Catch?: { Next: string }[] };
export type Definition = LocalStateMachine['definition'];

export const statesOf = (definition: Definition) => definition.States as unknown as Record<string, State>;
/** Where a state goes when it does not fail: Next, a Choice's branches and Default. */
export const flow = (state: State) => [state.Next, state.Default, ...(state.Choices ?? []).map((c) => c.Next)].filter((n): n is string => !!n);

/** States reachable from `starts` along `edges`, breadth first (so in the order a run meets them). */
export function reachable(starts: string[], edges: (name: string) => string[]): string[] {
  const seen = [...new Set(starts)];
  for (let i = 0; i < seen.length; i++) {
    for (const next of edges(seen[i])) if (!seen.includes(next)) seen.push(next);
  }
  return seen;
}

/**
 * Splits the Task states: the forward path (on a way from StartAt to success, in the order a run meets them) and
 * the failure path (the rest: where a Catch or a timed-out poll leads, which only ends failed). A fault on the
 * failure path is not one to roll back from: the compensation (RevertPlan, RevertUpgrade) failing ends the operation
 * `failed` by design, and FailOperation failing leaves the operation to the OperationReaper.
 */
export function splitTaskStates(definition: Definition): { forward: string[]; failurePath: string[] } {
  const states = statesOf(definition);
  const next = (name: string) => flow(states[name]);
  const succeeds = (name: string) => reachable([name], next).some((n) => states[n].Type === 'Succeed' || (states[n].End && states[n].Type !== 'Fail'));
  const tasks = taskStates(definition).map(([name]) => name);
  const forward = reachable([definition.StartAt], next).filter((name) => tasks.includes(name) && succeeds(name));
  return { forward, failurePath: tasks.filter((name) => !forward.includes(name)) };
}

