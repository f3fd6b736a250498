import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnAgent } from '../agent/spawn.ts';
import { hashToken, issueToken } from '../functions/core/auth.ts';
import { envNames, workflowNames, type WorkflowName } from '../functions/core/config.ts';
import { newId } from '../functions/core/ids.ts';
import { keyEnvNames, LocalKeyWrapper } from '../functions/core/keys.ts';
import { outboundPolicy } from '../functions/core/outbound-url.ts';
import { armStepFault, stepFaultsEnv } from '../functions/core/steps.ts';
import { Store } from '../functions/core/store.ts';
import { startAwsEndpoint } from './aws-endpoint.ts';
import { ensureTable, localDynamoClient, startDynamoLocal } from './dynamodb.ts';
import { createLocalEventBus } from './event-bus.ts';
import { startHttpApi } from './http-api.ts';
import { invokeHandler, localFunctionName } from './lambda.ts';
import { forgetStaleProcesses, rememberProcesses } from './stale.ts';
import { startSchedules } from './schedules.ts';
import { createLocalStepFunctions } from './stepfunctions.ts';
import { loadStateMachines, synthesizeTemplate, taskStates, type LocalStateMachine } from './template.ts';

/**
 * The whole service on one machine: DynamoDB Local, the agent with real PostgreSQL servers, the
 * state machines from the synthesized CDK template, the event bus, the schedules and the HTTP API,
 * all running the same handler modules CDK deploys. `npm start` runs it; tests start it in-process.
 */

export interface RuntimeOptions {
  /** Where all state lives (DynamoDB data, the agent's servers, the admin token). */
  dataDir: string;
  /** The API port; 0 picks a free one. */
  port?: number;
  /** Enables the agent's fault-injection routes (tests). */
  agentFaults?: boolean;
  /** Shortens state machine waits (tests, benchmarks). */
  fastWaits?: boolean;
  /** Enables `injectStepFault` (tests). */
  stepFaults?: boolean;
  log?: (message: string) => void;
}

export interface Runtime {
  apiUrl: string;
  adminToken: string;
  readonly agentUrl: string;
  /** The agent's process id (benches read its CPU time). */
  readonly agentPid: number;
  agentSecret: string;
  dynamoEndpoint: string;
  tableName: string;
  /** Kills the agent and its servers at once (a host crash), then starts it again; tests only. */
  crashAgent(): Promise<void>;
  /** Waits until every event put so far has been handled. */
  drainEvents(): Promise<void>;
  /** Runs a schedule now (as if fired at `time`, default now), e.g. the operation reaper. */
  fireSchedule(id: string, time?: Date): Promise<unknown>;
  /** The state machines it runs, from the synthesized template. */
  readonly stateMachines: readonly LocalStateMachine[];
  /**
   * Fails the next run of `workflow`'s Task state `state` for `databaseId` with `InjectedStepFault` (started
   * with `stepFaults`; the step's Lambda is shared, so the first workflow to run it for that database takes
   * the fault). Returns a function that disarms the fault and tells whether it fired.
   */
  injectStepFault(fault: { workflow: WorkflowName; state: string; databaseId: string; always?: boolean }): () => boolean;
  stop(): Promise<void>;
}

const tableName = 'dbplane';
const region = 'us-east-1';

/** A secret kept in the data folder with mode 0600, created on first start. */
function persistentSecret(path: string, create: () => string): string {
  if (existsSync(path)) return readFileSync(path, 'utf8').trim();
  const value = create();
  writeFileSync(path, `${value}\n`, { mode: 0o600 });
  return value;
}

export async function startRuntime(options: RuntimeOptions): Promise<Runtime> {
  const log = options.log ?? (() => undefined);
  const dataDir = options.dataDir;
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  await forgetStaleProcesses(dataDir);
  const cleanups: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((error) => log(`stop: ${(error as Error).message}`));
    cleanups.length = 0;
  };

  try {
    const dynamo = await startDynamoLocal(join(dataDir, 'dynamodb'));
    cleanups.push(() => dynamo.stop());
    log(`DynamoDB Local on ${dynamo.endpoint}`);

    const agentSecret = persistentSecret(join(dataDir, 'agent.secret'), () => randomBytes(32).toString('base64url'));
    // The local stand-in for KMS: the control plane wraps data keys with it, the agent unwraps them (0600, created once).
    const masterKeyFile = join(dataDir, 'master.key');
    LocalKeyWrapper.fromFile(masterKeyFile);
    process.env[keyEnvNames.masterKeyFile] = masterKeyFile;
    const startAgent = async () => {
      const started = await spawnAgent({ dataDir: join(dataDir, 'agent'), secret: agentSecret, faults: options.agentFaults });
      rememberProcesses(dataDir, [dynamo.child.pid!, started.pid]);
      log(`agent on ${started.url}`);
      return started;
    };
    let agent = await startAgent();
    cleanups.push(() => agent.stop());

    const bus = createLocalEventBus({ onError: (error) => log(`event delivery failed: ${(error as Error).message}`) });
    const { template } = await synthesizeTemplate({ bundle: false });
    const stateMachines = loadStateMachines(template);
    const stepFunctions = createLocalStepFunctions({
      stateMachines,
      invoke: invokeHandler,
      overrides: options.fastWaits ? { waitTimeOverrides: 50 } : undefined,
    });
    cleanups.push(async () => stepFunctions.stopAll());
    const endpoint = await startAwsEndpoint({ targets: { ...stepFunctions.targets, ...bus.targets } });
    cleanups.push(async () => {
      await bus.drain();
      await endpoint.close();
    });

    // The handlers run in this process: configure them exactly as CDK configures each Lambda.
    Object.assign(process.env, {
      AWS_REGION: region,
      AWS_ACCESS_KEY_ID: 'local',
      AWS_SECRET_ACCESS_KEY: 'local',
      AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
      AWS_ENDPOINT_URL_SFN: endpoint.url,
      AWS_ENDPOINT_URL_EVENTBRIDGE: endpoint.url,
      POWERTOOLS_LOG_LEVEL: process.env.POWERTOOLS_LOG_LEVEL ?? 'WARN',
      [envNames.tableName]: tableName,
      [envNames.eventBusName]: 'dbplane',
      [envNames.agentUrl]: agent.url,
      [envNames.agentSecret]: agentSecret,
      ...Object.fromEntries(workflowNames.map((name) => [envNames.stateMachineArn(name), stepFunctions.stateMachineArn(name)])),
    });
    if (options.stepFaults) process.env[stepFaultsEnv] = '1';
    else delete process.env[stepFaultsEnv];
    // The operator's exceptions to the outbound URL guard come from the environment as they are; a malformed one stops the start here, not a webhook later.
    const outbound = outboundPolicy();
    if (outbound.allowHttp || outbound.allowedRanges.length) log(`outbound URLs (webhooks) may also use: ${process.env[envNames.outboundAllow]}`);

    const client = localDynamoClient(dynamo.endpoint);
    await ensureTable(client, tableName);
    const adminToken = await ensureAdminToken(new Store(client, tableName), join(dataDir, 'admin.token'));

    const scheduler = startSchedules({ onError: (schedule, error) => log(`schedule ${schedule.id} failed: ${(error as Error).message}`) });
    cleanups.push(() => scheduler.stop());
    // Before taking requests: know what the host can run, and end operations a previous run left behind.
    await scheduler.fire('HostInventory');
    await scheduler.fire('OperationReaper');

    const api = await startHttpApi(options.port ?? 0);
    cleanups.push(() => api.close());

    return {
      apiUrl: api.url,
      adminToken,
      get agentUrl() {
        return agent.url;
      },
      get agentPid() {
        return agent.pid;
      },
      agentSecret,
      async crashAgent() {
        // SIGKILL to its process group: the agent and its servers die at once, as with the host.
        process.kill(-agent.pid, 'SIGKILL');
        await agent.stop();
        agent = await startAgent();
        process.env[envNames.agentUrl] = agent.url;
      },
      dynamoEndpoint: dynamo.endpoint,
      tableName,
      drainEvents: () => bus.drain(),
      fireSchedule: (id, time) => scheduler.fire(id, time),
      stateMachines,
      injectStepFault({ workflow, state, databaseId, always }) {
        const machine = stateMachines.find((m) => m.name === workflow)!;
        const resource = taskStates(machine.definition).find(([name]) => name === state)?.[1];
        if (!resource) throw new Error(`${workflow} has no Task state ${state}`);
        const { entry, handler } = machine.tasks[resource];
        return armStepFault({ functionName: localFunctionName(entry, handler), databaseId, message: `injected fault at ${workflow}.${state}`, always });
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** The operator's token: created with its account on first start, kept in the data folder (0600) after. */
async function ensureAdminToken(store: Store, path: string): Promise<string> {
  if (existsSync(path)) {
    const token = readFileSync(path, 'utf8').trim();
    if (await store.getToken(hashToken(token))) return token;
  }
  const account = { id: newId('acc'), name: 'operator', createdAt: new Date().toISOString() };
  await store.putAccount(account);
  const { token } = await issueToken(store, account.id, 'admin', ['admin', 'databases']);
  writeFileSync(path, `${token}\n`, { mode: 0o600 });
  return token;
}
