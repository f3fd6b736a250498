import { createRequire } from 'node:module';
import {
  DescribeExecutionCommand,
  ExecutionAlreadyExists,
  ExecutionDoesNotExist,
  SFNClient,
  StartExecutionCommand,
  StopExecutionCommand,
  type DescribeExecutionCommandOutput,
} from '@aws-sdk/client-sfn';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { workflowNames, type WorkflowName } from '../functions/core/config.ts';
import { entryMetadataKey } from '../infra/function.ts';
import { polls, stateNames, steps, type StepName } from '../infra/workflows/states.ts';

const { maxChecks: maxHealthChecks, timeoutError: instanceNotHealthyError } = polls.instance;
import { startAwsEndpoint, type AwsEndpoint } from '../local/aws-endpoint.ts';
import { createLocalStepFunctions, type LocalStepFunctions } from '../local/stepfunctions.ts';
import { loadStateMachines, synthesizeTemplate, taskStates, type CfnTemplate, type LocalStateMachine } from '../local/template.ts';

const aslValidator = createRequire(import.meta.url)('asl-validator') as (definition: unknown) => {
  isValid: boolean;
  errorsText: (separator?: string) => string;
};

let template: CfnTemplate;
let machines: LocalStateMachine[];

beforeAll(() => {
  ({ template } = synthesizeTemplate());
  machines = loadStateMachines(template);
});

const machine = (name: WorkflowName) => machines.find((m) => m.name === name)!;
const stepOf = Object.fromEntries(Object.entries(steps).map(([step, entry]) => [entry, step as StepName]));

describe('state machines from the synthesized template', () => {
  it('loads one state machine per workflow', () => {
    expect(machines.map((m) => m.name).sort()).toEqual([...workflowNames].sort());
  });

  it('renders ASL that asl-validator accepts', () => {
    for (const { name, definition } of machines) {
      const result = aslValidator(structuredClone(definition));
      expect(result.isValid, `${name}: ${result.errorsText('\n')}`).toBe(true);
    }
  });

  it('maps every Task to the step module and export CDK bundles', () => {
    for (const { name, definition, tasks } of machines) {
      for (const [stateName, resource] of taskStates(definition)) {
        expect(resource, `${name}.${stateName}`).toMatch(/^arn:aws:lambda:us-east-1:000000000000:function:\w+$/);
        // A state named after its step runs that step; a few (the major upgrade's after its cutover) have names of their own.
        const step = stateName in steps ? steps[stateName as StepName] : expect.toBeOneOf(Object.values(steps));
        expect(tasks[resource], `${name}.${stateName}`).toEqual({ entry: step, handler: 'handler' });
      }
    }
  });

  it('shares one Lambda per step between the state machines', () => {
    const arnOf = (name: WorkflowName, state: StepName) => machine(name).definition.States[state];
    for (const step of ['BeginOperation', 'RemoveInstance', 'CompleteOperation', 'FailOperation'] as const) {
      expect(arnOf('Provision', step)).toMatchObject({ Resource: (arnOf('Deprovision', step) as { Resource: string }).Resource });
    }
  });

  it('throws naming the state when a Task invokes a Lambda without handler metadata', () => {
    const broken = structuredClone(template);
    const [logicalId] = Object.entries(broken.Resources).find(([, r]) => r.Metadata?.[entryMetadataKey] === steps.EnsureInstance)!;
    delete broken.Resources[logicalId].Metadata![entryMetadataKey];
    expect(() => loadStateMachines(broken)).toThrow(/task state EnsureInstance invokes Lambda \w+, which has no dbplane:entry/);
  });
});

describe('running locally through the Step Functions endpoint', () => {
  type Script = Partial<Record<StepName, (payload: any, call: number) => unknown>>;
  let endpoint: AwsEndpoint;
  let local: LocalStepFunctions;
  let sfn: SFNClient;
  let script: Script = {};
  let calls: Array<{ step: StepName; payload: any }> = [];

  beforeAll(async () => {
    local = createLocalStepFunctions({
      stateMachines: machines,
      // Recording handlers: each step answers from the test's script, or echoes nothing.
      invoke: async (entry, handler, payload) => {
        expect(handler).toBe('handler');
        const step = stepOf[entry];
        calls.push({ step, payload: structuredClone(payload) });
        const count = calls.filter((c) => c.step === step).length;
        return script[step] ? script[step](payload, count) : {};
      },
      overrides: { waitTimeOverrides: { [stateNames.waitForInstance]: 0, [stateNames.waitForBackup]: 0, [stateNames.waitForRestore]: 0, [stateNames.waitForReplica]: 0 }, retryIntervalOverrides: 0 },
    });
    endpoint = await startAwsEndpoint({ targets: local.targets });
    sfn = new SFNClient({ endpoint: endpoint.url, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
  });

  afterEach(() => {
    script = {};
    calls = [];
  });

  afterAll(async () => {
    await local.stopAll();
    sfn.destroy();
    await endpoint.close();
  });

  async function start(workflow: WorkflowName, operationId: string): Promise<string> {
    const { executionArn } = await sfn.send(new StartExecutionCommand({
      stateMachineArn: local.stateMachineArn(workflow),
      name: operationId,
      input: JSON.stringify({ operationId, databaseId: `db-${operationId}` }),
    }));
    return executionArn!;
  }

  async function finished(executionArn: string): Promise<DescribeExecutionCommandOutput> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const execution = await sfn.send(new DescribeExecutionCommand({ executionArn }));
      if (execution.status !== 'RUNNING') return execution;
      if (Date.now() > deadline) throw new Error(`${executionArn} still running`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  const sequence = () => calls.map((c) => c.step);

  it('provisions: succeeds after one not-ready health check, and waits for the replica (there is one on a 2-node plan)', async () => {
    script.CheckInstance = (payload, call) => ({ ready: call >= 2, attempts: (payload.health?.attempts ?? 0) + 1 });
    script.CheckReplica = () => ({ ready: true, attempts: 1 });

    const execution = await finished(await start('Provision', 'op-happy'));

    expect(execution.status).toBe('SUCCEEDED');
    expect(sequence()).toEqual([
      'BeginOperation', 'CreateDataKey', 'EnsureInstance', 'CheckInstance', 'CheckInstance', 'AddReplica', 'CheckReplica', 'CompleteOperation',
    ]);
    expect(calls[0].payload).toEqual({ operationId: 'op-happy', databaseId: 'db-op-happy' });
    expect(calls[4].payload.health).toEqual({ ready: false, attempts: 1 });
    expect(JSON.parse(execution.output!)).toEqual({
      operationId: 'op-happy', databaseId: 'db-op-happy', health: { ready: true, attempts: 2 }, replicaProgress: { ready: true, attempts: 1 },
    });
  });

  it('provisions: a failing EnsureInstance ends in RemoveInstance, FailOperation and FAILED', async () => {
    script.EnsureInstance = () => {
      throw Object.assign(new Error('no host can run version 99'), { name: 'AgentRefused' });
    };

    const execution = await finished(await start('Provision', 'op-ensure-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence()).toEqual(['BeginOperation', 'CreateDataKey', 'EnsureInstance', 'RemoveInstance', 'FailOperation']);
    const failed = calls.at(-1)!.payload;
    expect(failed.error.Error).toBe('AgentRefused');
    expect(JSON.parse(failed.error.Cause)).toEqual({ errorType: 'AgentRefused', errorMessage: 'no host can run version 99' });
    expect(execution.error).toBe('AgentRefused');
  });

  it('provisions: retries a step while the agent is unavailable', async () => {
    script.EnsureInstance = (_payload, call) => {
      if (call < 3) throw Object.assign(new Error('connection refused'), { name: 'AgentUnavailable' });
      return {};
    };
    script.CheckInstance = () => ({ ready: true, attempts: 1 });
    script.CheckReplica = () => ({ ready: true, attempts: 1 });

    const execution = await finished(await start('Provision', 'op-retried'));

    expect(execution.status).toBe('SUCCEEDED');
    expect(sequence().filter((step) => step === 'EnsureInstance')).toHaveLength(3);
  });

  it(`provisions: ${maxHealthChecks} failed health checks send it to cleanup`, async () => {
    script.CheckInstance = (payload) => ({ ready: false, attempts: (payload.health?.attempts ?? 0) + 1 });

    const execution = await finished(await start('Provision', 'op-never-healthy'));

    expect(execution.status).toBe('FAILED');
    expect(sequence().filter((step) => step === 'CheckInstance')).toHaveLength(maxHealthChecks);
    expect(sequence().slice(-2)).toEqual(['RemoveInstance', 'FailOperation']);
    expect(calls.at(-1)!.payload.error).toEqual(instanceNotHealthyError);
    expect({ error: execution.error, cause: execution.cause }).toEqual({ error: instanceNotHealthyError.Error, cause: instanceNotHealthyError.Cause });
  });

  it('provisions: a failing cleanup still reaches FailOperation with the original error', async () => {
    script.EnsureInstance = () => {
      throw Object.assign(new Error('disk full'), { name: 'AgentRefused' });
    };
    script.RemoveInstance = () => {
      throw Object.assign(new Error('instance busy'), { name: 'AgentRefused' });
    };

    const execution = await finished(await start('Provision', 'op-cleanup-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence()).toEqual(['BeginOperation', 'CreateDataKey', 'EnsureInstance', 'RemoveInstance', 'FailOperation']);
    expect(JSON.parse(calls.at(-1)!.payload.error.Cause).errorMessage).toBe('disk full');
  });

  it('deprovisions: BeginOperation, RemoveInstance, PurgeBackups, CompleteOperation', async () => {
    const execution = await finished(await start('Deprovision', 'op-delete'));

    expect(execution.status).toBe('SUCCEEDED');
    expect(sequence()).toEqual(['BeginOperation', 'RemoveInstance', 'PurgeBackups', 'CompleteOperation']);
  });

  it('backs up: polls the backup until it is stored, then completes', async () => {
    script.CheckBackup = (payload, call) => ({ ready: call >= 2, attempts: (payload.backupProgress?.attempts ?? 0) + 1 });

    const execution = await finished(await start('Backup', 'op-backup'));

    expect(execution.status).toBe('SUCCEEDED');
    expect(sequence()).toEqual(['BeginOperation', 'StartBackup', 'CheckBackup', 'CheckBackup', 'CompleteOperation']);
  });

  it('backs up: a failed backup ends in FailOperation with its error', async () => {
    script.CheckBackup = () => {
      throw Object.assign(new Error('backup bk-1 failed: disk full'), { name: 'BackupFailed' });
    };

    const execution = await finished(await start('Backup', 'op-backup-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence()).toEqual(['BeginOperation', 'StartBackup', 'CheckBackup', 'FailOperation']);
    expect(execution.error).toBe('BackupFailed');
  });

  it('restores: undo backup first, then the restore, polled until verified', async () => {
    script.CheckBackup = (payload) => ({ ready: true, attempts: (payload.backupProgress?.attempts ?? 0) + 1 });
    script.CheckRestore = (payload, call) => ({ ready: call >= 2, attempts: (payload.restoreProgress?.attempts ?? 0) + 1 });

    const execution = await finished(await start('Restore', 'op-restore'));

    expect(execution.status).toBe('SUCCEEDED');
    expect(sequence()).toEqual(['BeginOperation', 'CreateDataKey', 'StartBackup', 'CheckBackup', 'StartRestore', 'CheckRestore', 'CheckRestore', 'CompleteOperation']);
  });

  it('restores: a failed restore runs AbandonRestore, then FailOperation with the restore error', async () => {
    script.CheckBackup = () => ({ ready: true, attempts: 1 });
    script.CheckRestore = () => {
      throw Object.assign(new Error('backup bk-1: no good copy'), { name: 'RestoreFailed' });
    };

    const execution = await finished(await start('Restore', 'op-restore-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence().slice(-3)).toEqual(['CheckRestore', 'AbandonRestore', 'FailOperation']);
    expect(calls.at(-1)!.payload.error.Error).toBe('RestoreFailed');
  });

  it('deprovisions: a failing RemoveInstance ends in FailOperation and FAILED', async () => {
    script.RemoveInstance = () => {
      throw Object.assign(new Error('agent said no'), { name: 'AgentRefused' });
    };

    const execution = await finished(await start('Deprovision', 'op-delete-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence()).toEqual(['BeginOperation', 'RemoveInstance', 'FailOperation']);
  });

  it('drills: restores into a scratch server, verifies, removes it, completes', async () => {
    script.CheckRestore = (payload) => ({ ready: true, attempts: (payload.restoreProgress?.attempts ?? 0) + 1 });

    const execution = await finished(await start('RestoreDrill', 'op-drill'));

    expect(execution.status).toBe('SUCCEEDED');
    expect(sequence()).toEqual(['BeginOperation', 'StartDrill', 'CheckRestore', 'VerifyDrill', 'RemoveScratch', 'CompleteOperation']);
  });

  it('drills: a failed check still removes the scratch server, then FailOperation', async () => {
    script.CheckRestore = (payload) => ({ ready: true, attempts: (payload.restoreProgress?.attempts ?? 0) + 1 });
    script.VerifyDrill = () => {
      throw Object.assign(new Error('table a: could not read block 3'), { name: 'AgentRefused' });
    };

    const execution = await finished(await start('RestoreDrill', 'op-drill-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence().slice(-3)).toEqual(['VerifyDrill', 'RemoveScratch', 'FailOperation']);
    expect(calls.at(-1)!.payload.error.Error).toBe('AgentRefused');
  });

  it('changes plan: precheck, replica removed if need be, replica resized and switched over to if rolling, resize, polls health, replica added and polled until caught up, verifies, completes', async () => {
    script.CheckInstance = (payload, call) => ({ ready: call >= 2, attempts: (payload.health?.attempts ?? 0) + 1 });
    script.CheckReplica = (payload, call) => ({ ready: call >= 2, attempts: (payload.replicaProgress?.attempts ?? 0) + 1 });

    const execution = await finished(await start('ChangePlan', 'op-plan'));

    expect(execution.status).toBe('SUCCEEDED');
    expect(sequence()).toEqual([
      'BeginOperation', 'PrecheckPlan', 'RemoveReplica', 'ResizeReplica', 'Switchover', 'ResizeInstance', 'CheckInstance', 'CheckInstance',
      'AddReplica', 'CheckReplica', 'CheckReplica', 'VerifyPlan', 'CompleteOperation',
    ]);
  });

  it('changes plan: a replica that does not catch up in time is reverted, then FailOperation with ReplicaNotCaughtUp', async () => {
    script.CheckInstance = () => ({ ready: true, attempts: 1 });
    script.CheckReplica = () => ({ ready: false, attempts: polls.replica.maxChecks });

    const execution = await finished(await start('ChangePlan', 'op-plan-lags'));

    expect(execution.status).toBe('FAILED');
    expect(sequence().slice(-4)).toEqual(['AddReplica', 'CheckReplica', 'RevertPlan', 'FailOperation']);
    expect(calls.at(-1)!.payload.error.Error).toBe('ReplicaNotCaughtUp');
  });

  it('changes plan: a server that fails after the resize is reverted, then FailOperation with the original error', async () => {
    script.CheckInstance = () => {
      throw Object.assign(new Error('injected fault'), { name: 'InstanceFailed' });
    };

    const execution = await finished(await start('ChangePlan', 'op-plan-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence()).toEqual([
      'BeginOperation', 'PrecheckPlan', 'RemoveReplica', 'ResizeReplica', 'Switchover', 'ResizeInstance', 'CheckInstance', 'RevertPlan', 'FailOperation',
    ]);
    const failed = calls.at(-1)!.payload;
    expect(failed.error.Error).toBe('InstanceFailed');
    expect(failed.cleanupError).toBeUndefined();
    expect(execution.error).toBe('InstanceFailed');
  });

  it('changes plan: a refused precheck or a failed verify also goes through RevertPlan', async () => {
    script.VerifyPlan = () => {
      throw Object.assign(new Error('max_connections is 50, not 150'), { name: 'PlanNotApplied' });
    };
    script.CheckInstance = () => ({ ready: true, attempts: 1 });
    script.CheckReplica = () => ({ ready: true, attempts: 1 });

    const execution = await finished(await start('ChangePlan', 'op-plan-verify-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence().slice(-3)).toEqual(['VerifyPlan', 'RevertPlan', 'FailOperation']);
    expect(execution.error).toBe('PlanNotApplied');
  });

  it('changes plan: a failing revert still reaches FailOperation, with the revert error kept apart', async () => {
    script.ResizeInstance = () => {
      throw Object.assign(new Error('instance spec refused'), { name: 'AgentRefused' });
    };
    script.RevertPlan = () => {
      throw Object.assign(new Error('the server did not come back'), { name: 'InstanceFailed' });
    };

    const execution = await finished(await start('ChangePlan', 'op-plan-revert-fails'));

    expect(execution.status).toBe('FAILED');
    expect(sequence()).toEqual(['BeginOperation', 'PrecheckPlan', 'RemoveReplica', 'ResizeReplica', 'Switchover', 'ResizeInstance', 'RevertPlan', 'FailOperation']);
    const failed = calls.at(-1)!.payload;
    expect(failed.error.Error).toBe('AgentRefused');
    expect(failed.cleanupError.Error).toBe('InstanceFailed');
  });

  it('answers a repeated start like AWS: same input while running is idempotent, other input is ExecutionAlreadyExists', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    script.BeginOperation = () => held.then(() => ({}));
    const input = JSON.stringify({ operationId: 'op-dup', databaseId: 'db-dup' });
    const stateMachineArn = local.stateMachineArn('Deprovision');

    const first = await sfn.send(new StartExecutionCommand({ stateMachineArn, name: 'op-dup', input }));
    const again = await sfn.send(new StartExecutionCommand({ stateMachineArn, name: 'op-dup', input }));
    const other = sfn.send(new StartExecutionCommand({ stateMachineArn, name: 'op-dup', input: '{"operationId":"op-dup","databaseId":"other"}' }));

    expect(again.executionArn).toBe(first.executionArn);
    await expect(other).rejects.toBeInstanceOf(ExecutionAlreadyExists);
    release();
    expect((await finished(first.executionArn!)).status).toBe('SUCCEEDED');
  });

  it('stops a running execution as ABORTED', async () => {
    script.CheckInstance = () => ({ ready: false, attempts: 0 }); // never healthy, never bounded: runs until stopped
    const executionArn = await start('Provision', 'op-stopped');
    const deadline = Date.now() + 5_000;
    while (!calls.some((c) => c.step === 'CheckInstance') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));

    await sfn.send(new StopExecutionCommand({ executionArn, error: 'Cancelled', cause: 'test' }));

    expect(await finished(executionArn)).toMatchObject({ status: 'ABORTED', error: 'Cancelled', stopDate: expect.any(Date) });
  });

  it('answers ExecutionDoesNotExist for an unknown execution', async () => {
    const unknown = sfn.send(new DescribeExecutionCommand({ executionArn: 'arn:aws:states:us-east-1:000000000000:execution:Provision:nope' }));
    await expect(unknown).rejects.toBeInstanceOf(ExecutionDoesNotExist);
  });
});
