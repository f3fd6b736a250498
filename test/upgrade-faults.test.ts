import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stateNames } from '../infra/workflows/states.ts';
import { eventually } from './helpers/agent.ts';
import { apiClient, type ApiClient, newTenant } from './helpers/api.ts';
import { createRunning, userTablesChecksum, withConnection } from './helpers/databases.ts';
import { startTestRuntime } from './helpers/runtime.ts';
import { flow, reachable, splitTaskStates, statesOf } from './helpers/workflow-paths.ts';

/**
 * A failure at any step of a minor upgrade, or of a major one up to its cutover, rolls it back: the operation ends
 * `rolled_back` with the reason, and the database serves queries on its previous version with every row (a major
 * upgrade's new server and its folder gone). After a major upgrade's cutover the database runs on the new major and
 * the path only goes forward: a step that fails once is retried. The steps come from the Upgrade definition the
 * runtime runs, so steps added later are faulted too.
 */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let api: ApiClient;
let forwardStates: string[];
/** Forward states of each path: those the other path's branch cannot reach (the ones before the choice are on both). */
let minorStates: string[];
let majorStates: string[];
/** States after the major upgrade's cutover. */
let afterCutover: string[];
const faultedIn = new Map<string, string[]>();

beforeAll(async () => {
  runtime = await startTestRuntime({ stepFaults: true });
  api = (await newTenant(apiClient(runtime.apiUrl, runtime.adminToken), runtime.apiUrl, 'alice')).api;
  const definition = runtime.stateMachines.find((m) => m.name === 'Upgrade')!.definition;
  forwardStates = splitTaskStates(definition).forward;
  const states = statesOf(definition);
  const choice = states[stateNames.isMajorUpgrade]!;
  const from = (start: string) => reachable([start], (name) => flow(states[name]!));
  minorStates = forwardStates.filter((state) => !from(choice.Choices![0]!.Next).includes(state));
  majorStates = forwardStates.filter((state) => !from(choice.Default!).includes(state));
  afterCutover = from(states[stateNames.cutover]!.Next!);
}, 120_000);

afterAll(async () => {
  await runtime?.stop();
});

async function upgrade(databaseId: string, version: string) {
  const started = await api.post(`/databases/${databaseId}/upgrade`, { version });
  if (started.status !== 202) throw new Error(`upgrade to ${version}: ${started.status} ${JSON.stringify(started.body)}`);
  return api.waitForOperation(started.body.operation.id, 120_000);
}

describe('a fault at each step of an upgrade', () => {
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

      for (const state of minorStates) {
        const disarm = runtime.injectStepFault({ workflow: 'Upgrade', state, databaseId: db.id });
        const operation = await upgrade(db.id, '16.14');
        if (!disarm()) throw new Error(`${state} never ran: the fault would have stopped the upgrade`);
        faultedIn.set(state, [...(faultedIn.get(state) ?? []), plan]);

        expect.soft(operation, state).toMatchObject({ status: 'rolled_back', error: `InjectedStepFault: injected fault at Upgrade.${state}` });
        expect.soft((await api.get(`/databases/${db.id}`)).body, state).toMatchObject({ version: '16.13', status: 'running', url: db.database.url });
        // A replica's lag jumps by a WAL file whenever the primary switches one (archive_timeout): read until caught up.
        const caughtUp = await eventually(async () => ((await nodes()).join() === healthy.join() ? healthy : undefined), 60_000).catch(() => nodes());
        expect.soft(caughtUp, state).toEqual(healthy);
        expect.soft(await observe(), state).toEqual(before);
      }
    }, 900_000);
  }

  it.concurrent('starter-512, 15 → 17 (blue/green): rolled back up to the cutover, the new server gone; retried after it', async ({ expect }) => {
    const newDatabase = async (name: string) => {
      const db = await createRunning(api, name, 'starter-512', '15');
      await withConnection(db.database.url, db.password, async (client) => {
        await client.query('CREATE TABLE items (id int PRIMARY KEY, body text)');
        await client.query('INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 2000) g');
      });
      return db;
    };
    const observe = (db: Awaited<ReturnType<typeof newDatabase>>) => withConnection(db.database.url, db.password, async (client) => ({
      major: (await client.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0].v.split('.')[0],
      tables: await userTablesChecksum(client),
    }));
    const instanceDir = (db: { id: string }) => join(runtime.dataDir, 'agent', 'instances', db.id);
    const greenFolders = (db: { id: string }) => readdirSync(instanceDir(db)).filter((name) => name.startsWith('green-'));

    const stays = await newDatabase('faults-major');
    const before = await observe(stays);
    for (const state of majorStates.filter((s) => !afterCutover.includes(s))) {
      const disarm = runtime.injectStepFault({ workflow: 'Upgrade', state, databaseId: stays.id });
      const operation = await upgrade(stays.id, '17');
      if (!disarm()) throw new Error(`${state} never ran: the fault would have stopped the upgrade`);
      faultedIn.set(state, [...(faultedIn.get(state) ?? []), 'major']);

      expect.soft(operation, state).toMatchObject({ status: 'rolled_back', error: `InjectedStepFault: injected fault at Upgrade.${state}` });
      expect.soft((await api.get(`/databases/${stays.id}`)).body, state).toMatchObject({ version: stays.database.version, status: 'running', url: stays.database.url });
      expect.soft(await observe(stays), state).toEqual(before);
      expect.soft(greenFolders(stays), state).toEqual([]);
    }

    for (const state of afterCutover.filter((s) => majorStates.includes(s))) {
      const db = await newDatabase(`faults-major-${state.toLowerCase()}`);
      const rows = (await observe(db)).tables;
      const disarm = runtime.injectStepFault({ workflow: 'Upgrade', state, databaseId: db.id });
      const operation = await upgrade(db.id, '17');
      if (!disarm()) throw new Error(`${state} never ran: the fault would have stopped the upgrade`);
      faultedIn.set(state, [...(faultedIn.get(state) ?? []), 'major']);

      expect.soft(operation.status, `${state}: ${operation.error}`).toBe('succeeded');
      expect.soft((await api.get(`/databases/${db.id}`)).body, state).toMatchObject({ version: '17.10', status: 'running', url: db.database.url });
      expect.soft(await observe(db), state).toEqual({ major: '17', tables: rows });
      // The old server's folder is kept for a rollback period.
      expect.soft(existsSync(join(instanceDir(db), 'data', 'PG_VERSION')), state).toBe(true);
    }
  }, 900_000);

  it('faulted every forward step', () => {
    expect(forwardStates.filter((state) => !faultedIn.has(state))).toEqual([]);
  });
});
