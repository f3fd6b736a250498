import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from './helpers/agent.ts';
import { apiClient, type ApiClient, newTenant } from './helpers/api.ts';
import { createRunning, userTablesChecksum, withConnection } from './helpers/databases.ts';
import { startTestRuntime } from './helpers/runtime.ts';
import { splitTaskStates } from './helpers/workflow-paths.ts';

/**
 * A failure at any step of a minor upgrade rolls it back: the operation ends `rolled_back` with the reason, and
 * the database serves queries on its previous version with every row. The steps come from the Upgrade
 * definition the runtime runs, so steps added later are faulted too.
 */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let api: ApiClient;
let forwardStates: string[];
const faultedIn = new Map<string, string[]>();

beforeAll(async () => {
  runtime = await startTestRuntime({ stepFaults: true });
  api = (await newTenant(apiClient(runtime.apiUrl, runtime.adminToken), runtime.apiUrl, 'alice')).api;
  forwardStates = splitTaskStates(runtime.stateMachines.find((m) => m.name === 'Upgrade')!.definition).forward;
}, 120_000);

afterAll(async () => {
  await runtime?.stop();
});

async function upgrade(databaseId: string, version: string) {
  const started = await api.post(`/databases/${databaseId}/upgrade`, { version });
  if (started.status !== 202) throw new Error(`upgrade to ${version}: ${started.status} ${JSON.stringify(started.body)}`);
  return api.waitForOperation(started.body.operation.id, 120_000);
}

describe('a fault at each step of a minor upgrade', () => {
  // One node restarts in place; two nodes roll (UpgradeReplica and Switchover act only there).
  for (const plan of ['starter-512', 'business-1024']) {
    it.concurrent(`${plan}, 16.13 → 16.14: rolled back, running 16.13 with every row`, async ({ expect }) => {
      const db = await createRunning(api, `faults-${plan}`, plan, '16.13');
      const observe = () => withConnection(db.database.url, db.password, async (client) => ({
        version: (await client.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0].v,
        tables: await userTablesChecksum(client),
      }));
      await withConnection(db.database.url, db.password, async (client) => {
        await client.query('CREATE TABLE items (id int PRIMARY KEY, body text)');
        await client.query('INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 2000) g');
      });
      const before = await observe();
      const healthy = plan === 'business-1024' ? ['primary running', 'replica running 0'] : ['primary running'];
      const nodes = async () => ((await api.get(`/databases/${db.id}`)).body.nodes ?? [])
        .map((n: { role: string; status: string; lagBytes?: number }) => `${n.role} ${n.status}${n.lagBytes === undefined ? '' : ` ${n.lagBytes}`}`);

      for (const state of forwardStates) {
        const disarm = runtime.injectStepFault({ workflow: 'Upgrade', state, databaseId: db.id });
        const operation = await upgrade(db.id, '16.14');
        if (!disarm()) throw new Error(`${state} never ran: the fault would have stopped the upgrade`);
        faultedIn.set(state, [...(faultedIn.get(state) ?? []), plan]);

        expect.soft(operation, state).toMatchObject({ status: 'rolled_back', error: `InjectedStepFault: injected fault at Upgrade.${state}` });
        expect.soft((await api.get(`/databases/${db.id}`)).body, state).toMatchObject({ version: '16.13', status: 'running', url: db.database.url });
        expect.soft(await nodes(), state).toEqual(healthy);
        expect.soft(await observe(), state).toEqual(before);
        await eventually(async () => ((await nodes()).join() === healthy.join() ? true : undefined), 60_000);
      }
    }, 900_000);
  }

  it('faulted every forward step', () => {
    expect(forwardStates.filter((state) => !faultedIn.has(state))).toEqual([]);
  });
});
