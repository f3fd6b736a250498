import middy, { type MiddlewareObj } from '@middy/core';
import type { Context } from 'aws-lambda';
import { z } from 'zod';
import { logger } from './logger.ts';
import { getStore } from './http.ts';
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

const parsedInput: MiddlewareObj<StepInput, unknown> = {
  before: (request) => {
    request.event = StepInput.parse(request.event);
  },
};

export interface StepOptions {
  /** The step's name on the operation, as users see it; omit for bookkeeping steps that are not shown. */
  step?: string;
}

export function stepHandler<R>(options: StepOptions, fn: (input: StepInput, store: Store) => Promise<R>) {
  return middy<StepInput, R, Error, Context>({ timeoutEarlyInMillis: 0 })
    .use(parsedInput)
    .use(options.step ? [recordStep(options.step)] : [])
    .handler((input) => fn(input, getStore()));
}
