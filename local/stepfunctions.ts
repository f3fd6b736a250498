/**
 * Step Functions, locally: the state machines from the synthesized template, run by aws-local-stepfunctions,
 * behind the `AWSStepFunctions.*` operations the handlers call through @aws-sdk/client-sfn.
 * (aws-local-stepfunctions needs Promise.withResolvers, native since Node 22: no polyfill on our Node 24.)
 */
import { randomUUID } from 'node:crypto';
import { ExecutionAbortedError, ExecutionError, ExecutionTimeoutError, StateMachine } from 'aws-local-stepfunctions';
import type { RunOptions } from 'aws-local-stepfunctions';
import { envNames, type WorkflowName } from '../functions/core/config.ts';
import { AwsServiceError, type AwsTargets } from './aws-endpoint.ts';
import { localAccount, localRegion, taskStates, type LocalStateMachine } from './template.ts';

/** Runs a handler: imports `entry` (relative to the project root) and calls its export `handler` with `payload`. */
export type Invoke = (entry: string, handler: string, payload: unknown) => Promise<unknown>;

type Overrides = NonNullable<RunOptions['overrides']>;

export interface LocalStepFunctionsOptions {
  stateMachines: readonly LocalStateMachine[];
  invoke: Invoke;
  /**
   * Shorter waits and retry intervals in milliseconds (tests, `fastWaits`): one number for every Wait
   * state / every retrier, or a value per state name.
   */
  overrides?: {
    waitTimeOverrides?: number | NonNullable<Overrides['waitTimeOverrides']>;
    retryIntervalOverrides?: number | NonNullable<Overrides['retryIntervalOverrides']>;
  };
  /** Called once per execution when it ends, whatever its status. */
  onExecutionEnd?: (execution: ExecutionDescription) => void;
}

export type ExecutionStatus = 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'TIMED_OUT' | 'ABORTED';

/** What DescribeExecution answers (dates as Date here, epoch seconds on the wire). */
export interface ExecutionDescription {
  executionArn: string;
  stateMachineArn: string;
  name: string;
  status: ExecutionStatus;
  startDate: Date;
  stopDate?: Date;
  input: string;
  output?: string;
  error?: string;
  cause?: string;
}

export interface LocalStepFunctions {
  /** `AWSStepFunctions.StartExecution`, `DescribeExecution`, `StopExecution`: plug into startAwsEndpoint. */
  targets: AwsTargets;
  /** Each workflow's local state machine ARN. */
  stateMachineArns: Record<WorkflowName, string>;
  stateMachineArn(name: WorkflowName): string;
  /** `STATE_MACHINE_ARN_<NAME>` → ARN, for the handlers' environment. */
  environment: Record<string, string>;
  /** The executions so far (for diagnostics and tests). */
  executions(): ExecutionDescription[];
  /** Aborts every running execution and waits for them to end (shutdown). */
  stopAll(): Promise<void>;
}

/** `arn:aws:states:us-east-1:000000000000:stateMachine:<workflow>`. */
export function localStateMachineArn(name: string): string {
  return `arn:aws:states:${localRegion}:${localAccount}:stateMachine:${name}`;
}

interface Execution extends ExecutionDescription {
  abort?: () => void;
  ended: Promise<void>;
}

interface Machine {
  name: WorkflowName;
  arn: string;
  stateMachine: StateMachine;
  handlers: NonNullable<Overrides['taskResourceLocalHandlers']>;
  overrides: Pick<Overrides, 'waitTimeOverrides' | 'retryIntervalOverrides'>;
}

const executionNamePattern = /^[0-9A-Za-z_-]{1,80}$/;

export function createLocalStepFunctions(options: LocalStepFunctionsOptions): LocalStepFunctions {
  const machines = new Map<string, Machine>();
  for (const local of options.stateMachines) {
    const arn = localStateMachineArn(local.name);
    const handlers: Machine['handlers'] = {};
    for (const [stateName, resource] of taskStates(local.definition)) {
      const task = local.tasks[resource];
      if (!task) throw new Error(`${local.name} task state ${stateName} (${resource}) is not mapped to a handler`);
      handlers[stateName] = (input) => invokeLikeLambda(options.invoke, task.entry, task.handler, input) as never;
    }
    machines.set(arn, {
      name: local.name,
      arn,
      stateMachine: new StateMachine(local.definition),
      handlers,
      overrides: {
        waitTimeOverrides: perState(local, 'Wait', options.overrides?.waitTimeOverrides),
        retryIntervalOverrides: perState(local, 'Retry', options.overrides?.retryIntervalOverrides),
      },
    });
  }
  const executions = new Map<string, Execution>();

  function start(machine: Machine, name: string, input: string): Execution {
    const executionArn = `arn:aws:states:${localRegion}:${localAccount}:execution:${machine.name}:${name}`;
    const startDate = new Date();
    const run = machine.stateMachine.run(JSON.parse(input), {
      overrides: { ...machine.overrides, taskResourceLocalHandlers: machine.handlers },
      context: {
        Execution: { Id: executionArn, Name: name, Input: JSON.parse(input), StartTime: startDate.toISOString() },
        StateMachine: { Id: machine.arn, Name: machine.name },
      },
    });
    const execution: Execution = {
      executionArn,
      stateMachineArn: machine.arn,
      name,
      status: 'RUNNING',
      startDate,
      input,
      abort: run.abort,
      ended: Promise.resolve(),
    };
    execution.ended = run.result.then(
      (result) => end(execution, { status: 'SUCCEEDED', output: JSON.stringify(result ?? null) }),
      (error: unknown) => end(execution, outcomeOf(error)),
    );
    return execution;
  }

  function end(execution: Execution, outcome: Pick<ExecutionDescription, 'status' | 'output' | 'error' | 'cause'>): void {
    if (execution.status !== 'RUNNING') return; // stopped: StopExecution already recorded the outcome
    Object.assign(execution, outcome, { stopDate: new Date(), abort: undefined });
    options.onExecutionEnd?.(describe(execution));
  }

  function find(executionArn: unknown): Execution {
    const execution = typeof executionArn === 'string' ? executions.get(executionArn) : undefined;
    if (!execution) throw new AwsServiceError('ExecutionDoesNotExist', `Execution Does Not Exist: '${String(executionArn)}'`);
    return execution;
  }

  const targets: AwsTargets = {
    'AWSStepFunctions.StartExecution': (request: { stateMachineArn?: string; name?: string; input?: string }) => {
      const machine = machines.get(request.stateMachineArn ?? '');
      if (!machine) throw new AwsServiceError('StateMachineDoesNotExist', `State Machine Does Not Exist: '${request.stateMachineArn}'`);
      const name = request.name ?? randomUUID();
      if (!executionNamePattern.test(name)) throw new AwsServiceError('InvalidName', `Invalid Name: '${name}'`);
      const input = request.input ?? '{}';
      try {
        JSON.parse(input);
      } catch {
        throw new AwsServiceError('InvalidExecutionInput', 'Invalid Execution Input: not JSON');
      }
      const executionArn = `arn:aws:states:${localRegion}:${localAccount}:execution:${machine.name}:${name}`;
      const existing = executions.get(executionArn);
      if (existing) {
        // As in AWS: the same name and input while running is idempotent; otherwise the name is taken.
        if (existing.status === 'RUNNING' && existing.input === input) return { executionArn, startDate: seconds(existing.startDate) };
        throw new AwsServiceError('ExecutionAlreadyExists', `Execution Already Exists: '${executionArn}'`);
      }
      const execution = start(machine, name, input);
      executions.set(executionArn, execution);
      return { executionArn, startDate: seconds(execution.startDate) };
    },

    'AWSStepFunctions.DescribeExecution': (request: { executionArn?: string }) => {
      const execution = describe(find(request.executionArn));
      return {
        ...execution,
        startDate: seconds(execution.startDate),
        stopDate: execution.stopDate ? seconds(execution.stopDate) : undefined,
      };
    },

    'AWSStepFunctions.StopExecution': (request: { executionArn?: string; error?: string; cause?: string }) => {
      const execution = find(request.executionArn);
      if (execution.status === 'RUNNING') {
        const abort = execution.abort;
        Object.assign(execution, { status: 'ABORTED', stopDate: new Date(), error: request.error, cause: request.cause, abort: undefined });
        abort?.();
        options.onExecutionEnd?.(describe(execution));
      }
      return { stopDate: seconds(execution.stopDate ?? new Date()) };
    },
  };

  const stateMachineArns = Object.fromEntries([...machines.values()].map((machine) => [machine.name, machine.arn])) as Record<WorkflowName, string>;
  return {
    targets,
    stateMachineArns,
    stateMachineArn(name) {
      const arn = stateMachineArns[name];
      if (!arn) throw new Error(`no state machine for workflow ${name}`);
      return arn;
    },
    environment: Object.fromEntries(Object.entries(stateMachineArns).map(([name, arn]) => [envNames.stateMachineArn(name as WorkflowName), arn])),
    executions: () => [...executions.values()].map(describe),
    async stopAll() {
      const running = [...executions.values()].filter((execution) => execution.status === 'RUNNING');
      for (const execution of running) {
        targets['AWSStepFunctions.StopExecution']({ executionArn: execution.executionArn, error: 'Shutdown', cause: 'the local runtime stopped' });
      }
      await Promise.all(running.map((execution) => execution.ended));
    },
  };
}

/** Expands one number to every Wait state (or every state with a Retry) of the machine, top level and nested. */
function perState<T>(machine: LocalStateMachine, kind: 'Wait' | 'Retry', value: number | Record<string, T> | undefined): Record<string, T | number> | undefined {
  if (typeof value !== 'number') return value;
  const names: string[] = [];
  const visit = (states: LocalStateMachine['definition']['States']) => {
    for (const [name, state] of Object.entries(states)) {
      if (kind === 'Wait' ? state.Type === 'Wait' : 'Retry' in state && state.Retry) names.push(name);
      if (state.Type === 'Parallel') for (const branch of state.Branches) visit(branch.States);
      if (state.Type === 'Map') visit((state.ItemProcessor ?? state.Iterator)?.States ?? {});
    }
  };
  visit(machine.definition.States);
  return Object.fromEntries(names.map((name) => [name, value]));
}

function describe(execution: Execution): ExecutionDescription {
  const { executionArn, stateMachineArn, name, status, startDate, stopDate, input, output, error, cause } = execution;
  return { executionArn, stateMachineArn, name, status, startDate, stopDate, input, output, error, cause };
}

function seconds(date: Date): number {
  return date.getTime() / 1000;
}

/** How an execution that did not succeed ended: the error and cause of the failing state, as in AWS. */
function outcomeOf(error: unknown): Pick<ExecutionDescription, 'status' | 'error' | 'cause'> {
  if (error instanceof ExecutionAbortedError) return { status: 'ABORTED' };
  if (error instanceof ExecutionTimeoutError) return { status: 'TIMED_OUT', error: 'States.Timeout' };
  const failure = error instanceof ExecutionError && error.cause instanceof Error ? error.cause : error;
  if (failure instanceof Error) return { status: 'FAILED', error: failure.name, cause: failure.message };
  return { status: 'FAILED', error: 'States.Runtime', cause: String(failure) };
}

/**
 * Calls the handler as Lambda does for Step Functions: a thrown error reaches the state machine with its
 * `name` as the error (what Retry and Catch match) and, as Cause, Lambda's JSON error document.
 */
async function invokeLikeLambda(invoke: Invoke, entry: string, handler: string, payload: unknown): Promise<unknown> {
  // Yield to the event loop first: a polling loop whose waits are overridden to 0 must not starve the process.
  await new Promise((resolve) => setImmediate(resolve));
  try {
    return await invoke(entry, handler, payload);
  } catch (error) {
    const name = error instanceof Error ? error.name : 'Error';
    const message = error instanceof Error ? error.message : String(error);
    const lambdaError = new Error(JSON.stringify({ errorType: name, errorMessage: message }));
    lambdaError.name = name;
    throw lambdaError;
  }
}
