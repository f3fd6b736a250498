/**
 * State names of the workflows, and what the step handlers exchange with them. Infra builds the state
 * machines from these; tests and the local runtime refer to states by the same names.
 */
export const stateNames = {
  beginOperation: 'BeginOperation',
  ensureInstance: 'EnsureInstance',
  waitForInstance: 'WaitForInstance',
  checkInstance: 'CheckInstance',
  isInstanceReady: 'IsInstanceReady',
  instanceNotHealthy: 'InstanceNotHealthy',
  removeInstance: 'RemoveInstance',
  completeOperation: 'CompleteOperation',
  failOperation: 'FailOperation',
  succeeded: 'Succeeded',
  failed: 'Failed',
} as const;
export type StateName = (typeof stateNames)[keyof typeof stateNames];

/** The step Lambdas: one per step, shared by every state machine that uses it. */
export const steps = {
  BeginOperation: 'functions/steps/begin-operation.ts',
  EnsureInstance: 'functions/steps/ensure-instance.ts',
  CheckInstance: 'functions/steps/check-instance.ts',
  RemoveInstance: 'functions/steps/remove-instance.ts',
  CompleteOperation: 'functions/steps/complete-operation.ts',
  FailOperation: 'functions/steps/fail-operation.ts',
} as const satisfies Partial<Record<StateName, string>>;
export type StepName = keyof typeof steps;
/** Every step module exports its handler under this name. */
export const stepHandlerExport = 'handler';

/** JSONPath locations in the execution state. */
export const paths = {
  /** CheckInstance's result: `{ ready: boolean, attempts: number }`. */
  health: '$.health',
  healthReady: '$.health.ready',
  healthAttempts: '$.health.attempts',
  /** The caught error, `{ Error, Cause }`, which FailOperation reads. */
  error: '$.error',
  /** An error of the cleanup itself (RemoveInstance during Provision's cleanup), kept apart from `$.error`. */
  cleanupError: '$.cleanupError',
} as const;

/** Health polling of Provision: one check per `healthCheckIntervalSeconds`, at most `maxHealthChecks`. */
export const healthCheckIntervalSeconds = 1;
export const maxHealthChecks = 120;

/** What Provision records when the instance never becomes healthy. */
export const instanceNotHealthyError = {
  Error: 'InstanceNotHealthy',
  Cause: 'the server did not become healthy in time',
} as const;

/** Errors retried on every step: Lambda's transient failures and the agent being unreachable. */
export const transientErrors = [
  'Lambda.ServiceException',
  'Lambda.TooManyRequestsException',
  'Lambda.SdkClientException',
  'Lambda.ClientExecutionTimeoutException',
  'AgentUnavailable',
] as const;

/** The execution input every workflow takes. */
export interface ExecutionInput {
  operationId: string;
  databaseId: string;
}
