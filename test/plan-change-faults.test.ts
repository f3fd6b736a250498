import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPlan, postgresSettings } from '../functions/core/catalog.ts';
import { eventually } from './helpers/agent.ts';
import { type ApiClient, type ApiResponse, newTenant, apiClient } from './helpers/api.ts';
import { createRunning, userTablesChecksum, withConnection } from './helpers/databases.ts';
import { startTestRuntime } from './helpers/runtime.ts';
import { flow, reachable, splitTaskStates, statesOf } from './helpers/workflow-paths.ts';

/**
 * A failure at any step of a plan change rolls it back: the operation ends `rolled_back` with the reason, and
 * the database serves queries on its previous plan with every row. The faulted steps come from the ChangePlan
 * definition the runtime runs, so steps added later are covered without touching this file.
 */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let api: ApiClient;
/** ChangePlan's forward Task states, in the order they run. */
let forwardStates: string[];
/** The direction (`from → to`) that faulted each forward state. */
const faultedIn = new Map<string, string[]>();

async function changePlan(databaseId: string, plan: string) {
  const started = await api.post(`/databases/${databaseId}/plan`, { plan });
  if (started.status !== 202) throw new Error(`plan change to ${plan}: ${started.status} ${JSON.stringify(started.body)}`);
  return api.waitForOperation(started.body.operation.id, 120_000);
}

type Database = Awaited<ReturnType<typeof createRunning>>;

/** A database on `plan` with rows in two tables. */
async function databaseWithRows(name: string, plan: string): Promise<Database> {
  const database = await createRunning(api, name, 'starter-512');
  await withConnection(database.database.url, database.password, async (client) => {
    await client.query('CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL)');
    await client.query('INSERT INTO items SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 5000) g');
    await client.query('CREATE TABLE customers (id serial PRIMARY KEY, name text)');
    await client.query("INSERT INTO customers (name) VALUES ('ada'), ('grace'), ('edsger')");
  });
  if (plan !== 'starter-512') {
    const operation = await changePlan(database.id, plan);
    if (operation.status !== 'succeeded') throw new Error(`${name} to ${plan}: ${operation.error}`);
  }
  return database;
}

/** The settings a plan gives the server, as SHOW prints them. */
function settingsOf(plan: string) {
  const { max_connections, shared_buffers } = postgresSettings(findPlan(plan)!);
  return { max_connections, shared_buffers };
}

/** What a client sees through the database's URL: a writable primary, its plan's settings, the rows. */
const observe = (database: Database) => withConnection(database.database.url, database.password, async (client) => ({
  primary: !(await client.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0].r,
  max_connections: (await client.query<{ max_connections: string }>('SHOW max_connections')).rows[0].max_connections,
  shared_buffers: (await client.query<{ shared_buffers: string }>('SHOW shared_buffers')).rows[0].shared_buffers,
  tables: await userTablesChecksum(client),
})).catch((error: Error) => ({ unreachable: error.message }));

beforeAll(async () => {
  runtime = await startTestRuntime({ stepFaults: true });
  api = (await newTenant(apiClient(runtime.apiUrl, runtime.adminToken), runtime.apiUrl, 'alice')).api;
  forwardStates = splitTaskStates(runtime.stateMachines.find((m) => m.name === 'ChangePlan')!.definition).forward;
}, 120_000);

afterAll(async () => {
  await runtime?.stop();
});

describe('a fault at each step of a plan change', () => {
  it('takes the steps from the ChangePlan definition: the forward path; the failure path is only what a Catch leads to', () => {
    const { definition } = runtime.stateMachines.find((m) => m.name === 'ChangePlan')!;
    const { forward, failurePath } = splitTaskStates(definition);
    const afterCatch = reachable(Object.values(statesOf(definition)).flatMap((state) => (state.Catch ?? []).map((c) => c.Next)), (name) => flow(statesOf(definition)[name]));

    expect(forward[0]).toBe(definition.StartAt);
    expect(failurePath.length).toBeGreaterThan(0);
    expect(failurePath.filter((name) => !afterCatch.includes(name))).toEqual([]);
  });

  // Starter → business adds a replica, business → starter removes it, business → business resizes both nodes:
  // the steps act differently. One database per direction serves every fault: each rollback leaves it on its old plan.
  for (const [from, to] of [['starter-512', 'business-1024'], ['business-1024', 'starter-512'], ['business-1024', 'business-2048']]) {
    it.concurrent(`${from} → ${to}: rolled back, running on ${from} with every row`, async ({ expect }) => {
      const database = await databaseWithRows(`${from}-to-${to}`, from);
      const before = await observe(database);
      expect(before).toMatchObject({ primary: true, ...settingsOf(from) });
      // As the forward path leaves a 2-node plan: both nodes running, the replica caught up (CheckReplica).
      const healthy = findPlan(from)!.nodes === 2 ? ['primary running', 'replica running, 0 bytes behind'] : ['primary running'];
      const nodes = async () => ((await api.get(`/databases/${database.id}`)).body.nodes ?? [])
        .map((n: { role: string; status: string; lagBytes?: number }) => `${n.role} ${n.status}${n.lagBytes === undefined ? '' : `, ${n.lagBytes} bytes behind`}`);

      for (const state of forwardStates) {
        const disarm = runtime.injectStepFault({ workflow: 'ChangePlan', state, databaseId: database.id });
        const operation = await changePlan(database.id, to);
        if (!disarm()) {
          // Not a step of this direction (a Choice skipped it): it ran to the end; go back for the next fault.
          expect(operation.status, `${state}: ${operation.error}`).toBe('succeeded');
          expect((await changePlan(database.id, from)).status, `${state}: back to ${from}`).toBe('succeeded');
          continue;
        }
        faultedIn.set(state, [...(faultedIn.get(state) ?? []), `${from} → ${to}`]);
        const after = (await api.get(`/databases/${database.id}`)).body;

        expect.soft(operation, state).toMatchObject({ status: 'rolled_back', error: `InjectedStepFault: injected fault at ChangePlan.${state}` });
        expect.soft(after, state).toMatchObject({ plan: from, status: 'running', url: database.database.url });
        expect.soft(after.activeOperation, state).toBeUndefined();
        expect.soft(await nodes(), `${state}: the nodes of ${from} when the operation ends`).toEqual(healthy);
        expect.soft(await observe(database), state).toEqual(before);
        // The next fault needs a healthy database: wait for one, and stop here if this rollback never gets there.
        let last: string[] = [];
        await eventually(async () => ((last = await nodes()).join() === healthy.join() ? true : undefined), 60_000).catch(() => undefined);
        expect(last, `${state}: the nodes of ${from} 60 s after the operation ended`).toEqual(healthy);
      }
    }, 900_000);
  }

  it('faulted every forward step in some direction', () => {
    expect(forwardStates.filter((state) => !faultedIn.has(state)), 'steps no direction ran: add a direction that runs them').toEqual([]);
  });
});

describe('concurrent operations on one database', () => {
  let racer: Database;
  beforeAll(async () => {
    racer = await createRunning(api, 'racer', 'starter-512');
  }, 120_000);

  const refused = (answer: ApiResponse, operationId: string) => {
    expect(answer.status, JSON.stringify(answer.body)).toBe(409);
    expect(answer.headers.get('content-type')).toBe('application/problem+json');
    expect(answer.body.detail).toContain(operationId);
  };

  it('refuses every other operation while a plan change runs, and a plan change while a backup runs', async () => {
    const change = await api.post(`/databases/${racer.id}/plan`, { plan: 'starter-1024' });
    expect(change.status, JSON.stringify(change.body)).toBe(202);
    const duringChange = await Promise.all([
      api.post(`/databases/${racer.id}/backups`),
      api.post(`/databases/${racer.id}/plan`, { plan: 'starter-2048' }),
      api.delete(`/databases/${racer.id}`),
    ]);
    expect((await api.waitForOperation(change.body.operation.id)).status).toBe('succeeded');

    const backup = await api.post(`/databases/${racer.id}/backups`);
    expect(backup.status, JSON.stringify(backup.body)).toBe(202);
    const duringBackup = await api.post(`/databases/${racer.id}/plan`, { plan: 'starter-512' });
    expect((await api.waitForOperation(backup.body.operation.id)).status).toBe('succeeded');

    for (const answer of duringChange) refused(answer, change.body.operation.id);
    refused(duringBackup, backup.body.operation.id);
  });

  it('accepts exactly one of a plan change, a manual backup, a second plan change and a delete fired together', async () => {
    const answers = await Promise.all([
      api.post(`/databases/${racer.id}/plan`, { plan: 'starter-512' }),
      api.post(`/databases/${racer.id}/backups`),
      api.post(`/databases/${racer.id}/plan`, { plan: 'business-1024' }),
      api.delete(`/databases/${racer.id}`),
    ]);

    const accepted = answers.filter((answer) => answer.status === 202);
    expect(answers.map((answer) => answer.status).sort(), JSON.stringify(answers.map((answer) => answer.body))).toEqual([202, 409, 409, 409]);
    for (const answer of answers.filter((a) => a !== accepted[0])) refused(answer, accepted[0].body.operation.id);
    expect((await api.waitForOperation(accepted[0].body.operation.id, 120_000)).status).toBe('succeeded');
  });
});
