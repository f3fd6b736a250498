import middy, { type MiddlewareObj } from '@middy/core';
import type { Context } from 'aws-lambda';
import { z } from 'zod';
import { logger } from './logger.ts';
import { getStore } from './http.ts';
import { checkRunWindow } from './maintenance-model.ts';
import type { Store } from './store.ts';

/**
 * Step handlers: the Lambdas a state machine composes. Typed input in, typed output out, domain
 * errors thrown (a Catch matches their `name`). Each is safe to run twice with the same input.
 */

export const StepInput = z.object({
  operationId: z.string(),
  databaseId: z.string(),
  health: z.object({ ready: z.boolean(), attempts: z.number().int() }).optional(),
  /** The error a Catch put at `$.error`. */
  error: z.object({ Error: z.string(), Cause: z.string().optional() }).optional(),
  /** The error of a cleanup step, kept apart from `$.error`. */
  cleanupError: z.object({ Error: z.string(), Cause: z.string().optional() }).optional(),
}).loose();
export type StepInput = z.infer<typeof StepInput>;

/** Records the step on its operation: started (or retried) before, succeeded or failed after. */
const recordStep = (name: string): MiddlewareObj<StepInput, unknown> => ({
  before: async ({ event }) => {
    await getStore().stepStarted({ id: event.operationId, databaseId: event.databaseId }, name, new Date().toISOString());
  },
  after: async ({ event }) => {
    await getStore().stepEnded({ id: event.operationId, databaseId: event.databaseId }, name, 'succeeded', new Date().toISOString());
  },
  onError: async ({ event, error }) => {
    logger.warn('step failed', { step: name, operationId: event.operationId, error: error as Error });
    await getStore().stepEnded({ id: event.operationId, databaseId: event.databaseId }, name, 'failed', new Date().toISOString(), (error as Error).message);
  },
});

/**
 * Test-only fault injection. The local runtime started with `stepFaults` sets this variable to `1`; CDK never
 * sets it, so in AWS the middleware below does nothing.
 */
export const stepFaultsEnv = 'DBPLANE_STEP_FAULTS';

/** The error an armed fault throws: not among the retried transient errors, so a Catch takes it like any failure. */
class InjectedStepFault extends Error {
  override readonly name = 'InjectedStepFault';
}

/**
 * Armed faults, `<function name> <database id>` → message and whether it fired; each fails one invocation, or with
 * `always` every one until disarmed (a step retried on any error). Handlers run in the runtime's process.
 */
const armedFaults = new Map<string, { message: string; always: boolean; fired: boolean }>();

/** Fails the next invocation of the Lambda `functionName` for `databaseId`; the returned function disarms it and tells whether it fired. */
export function armStepFault(fault: { functionName: string; databaseId: string; message: string; always?: boolean }): () => boolean {
  if (process.env[stepFaultsEnv] !== '1') throw new Error(`step faults are disabled (${stepFaultsEnv} is not 1)`);
  const key = `${fault.functionName} ${fault.databaseId}`;
  const armed = { message: fault.message, always: fault.always ?? false, fired: false };
  armedFaults.set(key, armed);
  return () => {
    if (armedFaults.get(key) === armed) armedFaults.delete(key);
    return armed.fired;
  };
}

const injectedFault: MiddlewareObj<StepInput, unknown, Error, Context> = {
  before: ({ event, context }) => {
    if (process.env[stepFaultsEnv] !== '1') return;
    const key = `${context.functionName} ${event.databaseId}`;
    const armed = armedFaults.get(key);
    if (armed === undefined) return;
    armed.fired = true;
    if (!armed.always) armedFaults.delete(key);
    throw new InjectedStepFault(armed.message);
  },
};

const parsedInput: MiddlewareObj<StepInput, unknown> = {
  before: (request) => {
    request.event = StepInput.parse(request.event);
  },
};

/** In an operation a maintenance runs, a disruptive step never starts after the window closed (the Catch rolls back). */
const withinMaintenanceWindow = (name: string): MiddlewareObj<StepInput, unknown> => ({
  before: async ({ event }) => {
    const operation = await getStore().getDatabaseOperation(event.databaseId, event.operationId);
    if (operation) checkRunWindow(operation, name);
  },
});

export interface StepOptions {
  /** The step's name on the operation, as users see it; omit for bookkeeping steps that are not shown. */
  step?: string;
  /** It restarts or moves a server: refused once the window of the maintenance running the operation has closed. */
  disruptive?: boolean;
}

export function stepHandler<R>(options: StepOptions, fn: (input: StepInput, store: Store) => Promise<R>) {
  return middy<StepInput, R, Error, Context>({ timeoutEarlyInMillis: 0 })
    .use(parsedInput)
    .use(options.step ? [recordStep(options.step)] : [])
    // After recordStep, so the operation shows the refused step as failed with the closed window.
    .use(options.disruptive ? [withinMaintenanceWindow(options.step ?? 'a disruptive step')] : [])
    // After recordStep, so the operation shows the faulted step as failed with the injected message.
    .use(injectedFault)
    .handler((input) => fn(input, getStore()));
}
