import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPlan, planIds, postgresSettings, sameSetting } from '../functions/core/catalog.ts';
import { type ApiClient, apiClient, newTenant } from './helpers/api.ts';
import { agentCaller, eventually } from './helpers/agent.ts';
import { dbplane, succeeded } from './helpers/cli.ts';
import { connect, createRunning, withConnection } from './helpers/databases.ts';
import { probeWrites } from './helpers/probe.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/** Plan changes of one node end to end: real agent, real PostgreSQL restarted on the target plan's settings. */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let alice: Awaited<ReturnType<typeof newTenant>>;
let bob: Awaited<ReturnType<typeof newTenant>>;
let shop: Awaited<ReturnType<typeof createRunning>>;
let rowsBefore: { rows: number; checksum: string };

const withClient = <T>(fn: (client: pg.Client) => Promise<T>) => withConnection(shop.database.url, shop.password, fn);

/** Every row of every user table, hashed in a stable order. */
const userTables = () => withClient(async (client) => {
  const { rows: [row] } = await client.query<{ rows: number; checksum: string }>(`
    SELECT (SELECT count(*)::int FROM items) + (SELECT count(*)::int FROM customers) AS rows,
           md5((SELECT string_agg(i::text, ',' ORDER BY i.id) FROM items i) || (SELECT string_agg(c::text, ',' ORDER BY c.id) FROM customers c)) AS checksum`);
  return row;
});

const serverSettings = () => withClient(async (client) => ({
  max_connections: (await client.query<{ max_connections: string }>('SHOW max_connections')).rows[0].max_connections,
  shared_buffers: (await client.query<{ shared_buffers: string }>('SHOW shared_buffers')).rows[0].shared_buffers,
}));

const planSettings = (plan: string) => {
  const { max_connections, shared_buffers } = postgresSettings(findPlan(plan)!);
  return { max_connections, shared_buffers };
};

async function changePlan(api: ApiClient, plan: string) {
  const started = await api.post(`/databases/${shop.id}/plan`, { plan });
  expect(started.status, JSON.stringify(started.body)).toBe(202);
  return api.waitForOperation(started.body.operation.id);
}

beforeAll(async () => {
  runtime = await startTestRuntime({ agentFaults: true });
  const admin = apiClient(runtime.apiUrl, runtime.adminToken);
  alice = await newTenant(admin, runtime.apiUrl, 'alice');
  bob = await newTenant(admin, runtime.apiUrl, 'bob');
  shop = await createRunning(alice.api, 'shop', 'starter-512');
  await withClient(async (client) => {
    await client.query('CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL)');
    await client.query("INSERT INTO items SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 5000) g");
    await client.query('CREATE TABLE customers (id serial PRIMARY KEY, name text)');
    await client.query("INSERT INTO customers (name) VALUES ('ada'), ('grace'), ('edsger')");
  });
  rowsBefore = await userTables();
}, 60_000);

afterAll(async () => {
  await runtime?.stop();
});

describe('plan changes of a one-node database', () => {
  it('reads usage from the agent: data directory size, client connections, the settings the plan manages', async () => {
    const agent = agentCaller(() => ({ url: runtime.agentUrl }), runtime.agentSecret);
    const usage = await withClient(() => agent('GET', `/v1/instances/${shop.id}/usage`));

    expect(usage.status, JSON.stringify(usage.body)).toBe(200);
    expect(usage.body.diskBytes).toBeGreaterThan(1_000_000);
    expect(usage.body.connections).toBeGreaterThanOrEqual(1);
    const expected = postgresSettings(findPlan('starter-512')!);
    expect(Object.keys(usage.body.settings).sort()).toEqual(Object.keys(expected).sort());
    for (const [name, value] of Object.entries(expected)) expect(sameSetting(usage.body.settings[name], value), name).toBe(true);
    expect(sameSetting('1024MB', '1GB') && !sameSetting('1024MB', '1024kB')).toBe(true);
  });

  it('previews a change: allowed, with its steps, and changes nothing', async () => {
    const preview = await alice.api.get(`/databases/${shop.id}/plan-change/preview?plan=starter-2048`);

    expect(preview.status, JSON.stringify(preview.body)).toBe(200);
    expect(preview.body).toMatchObject({ allowed: true, reasons: [], from: 'starter-512', to: 'starter-2048', expectedUnavailabilitySeconds: expect.any(Number) });
    expect(preview.body.steps.join('\n')).toMatch(/max_connections 50 → 150.*shared_buffers 128MB → 512MB/);
    const database = (await alice.api.get(`/databases/${shop.id}`)).body;
    expect(database).toMatchObject({ plan: 'starter-512', status: 'running' });
    expect(database.activeOperation).toBeUndefined();
    expect((await alice.api.get(`/databases/${shop.id}/operations`)).body.operations).toHaveLength(1);
  });

  it('refuses an unknown plan with 422 listing the valid plans', async () => {
    const changed = await alice.api.post(`/databases/${shop.id}/plan`, { plan: 'enterprise-9' });
    const previewed = await alice.api.get(`/databases/${shop.id}/plan-change/preview?plan=enterprise-9`);

    expect(changed.status).toBe(422);
    expect(changed.body.errors).toEqual([{ pointer: '/body/plan', detail: `one of: ${planIds.join(', ')}` }]);
    expect(previewed.status).toBe(422);
    expect(previewed.body.errors[0].pointer).toBe('/query/plan');
  });

  it('refuses the plan the database is already on with 422', async () => {
    const changed = await alice.api.post(`/databases/${shop.id}/plan`, { plan: 'starter-512' });

    expect(changed.status).toBe(422);
    expect(changed.body.detail).toBe('the database is already on starter-512');
  });

  it('answers 400 with a pointer per bad field', async () => {
    const changed = await alice.api.post(`/databases/${shop.id}/plan`, { plan: 5, when: 'tomorrow' });

    expect(changed.status).toBe(400);
    expect(changed.body.errors.map((e: { pointer: string }) => e.pointer).sort()).toEqual(['/body/plan', '/body/when']);
  });

  it("answers 404 for another account's database", async () => {
    expect((await bob.api.post(`/databases/${shop.id}/plan`, { plan: 'starter-2048' })).status).toBe(404);
    expect((await bob.api.get(`/databases/${shop.id}/plan-change/preview?plan=starter-2048`)).status).toBe(404);
  });

  it('queues a change for the maintenance window and starts nothing', async () => {
    const queued = await alice.api.post(`/databases/${shop.id}/plan`, { plan: 'starter-1024', when: 'maintenance_window' });

    expect(queued.status, JSON.stringify(queued.body)).toBe(202);
    expect(queued.body.operation).toBeUndefined();
    const database = (await alice.api.get(`/databases/${shop.id}`)).body;
    expect(database).toMatchObject({ plan: 'starter-512', pendingPlanChange: { plan: 'starter-1024', requestedAt: expect.any(String) } });
    expect(database.activeOperation).toBeUndefined();
    expect((await alice.api.get(`/databases/${shop.id}/operations`)).body.operations).toHaveLength(1);
    expect(await serverSettings()).toEqual(planSettings('starter-512'));
  });

  it('changes starter-512 → starter-2048: restarted on the new settings, same URL, every row intact, billing event', async () => {
    const operation = await changePlan(alice.api, 'starter-2048');

    expect(operation.status, operation.error).toBe('succeeded');
    expect(operation.kind).toBe('change_plan');
    expect(operation.input).toEqual({ fromPlan: 'starter-512', toPlan: 'starter-2048' });
    expect(operation.steps.map((s: { name: string; status: string }) => [s.name, s.status])).toEqual([
      ['precheck plan', 'succeeded'], ['remove replica', 'succeeded'], ['resize the replica', 'succeeded'], ['switch over to the replica', 'succeeded'],
      ['resize server', 'succeeded'], ['wait until healthy', 'succeeded'],
      ['add replica', 'succeeded'], ['wait until the replica caught up', 'succeeded'], ['verify plan', 'succeeded'],
    ]);
    const database = (await alice.api.get(`/databases/${shop.id}`)).body;
    expect(database).toMatchObject({ plan: 'starter-2048', status: 'running', url: shop.database.url });
    const instance = (await agentCaller(() => ({ url: runtime.agentUrl }), runtime.agentSecret)('GET', `/v1/instances/${shop.id}`)).body;
    expect(Number(new URL(database.url).port)).toBe(instance.gatewayPort);
    expect(await serverSettings()).toEqual(planSettings('starter-2048'));
    expect(await userTables()).toEqual(rowsBefore);
    await runtime.drainEvents();
    const { events } = (await alice.api.get(`/databases/${shop.id}/events`)).body;
    const changed = events.find((e: { type: string }) => e.type === 'dbplane.database.plan-changed');
    expect(changed).toMatchObject({ operationId: operation.id, detail: { from: 'starter-512', to: 'starter-2048', at: expect.any(String) } });
  });

  it('refuses with 422 while more clients are connected than the target plan allows', async () => {
    const limit = findPlan('starter-512')!.maxConnections;
    const held = await Promise.all(Array.from({ length: limit + 1 }, () => connect(shop.database.url, shop.password)));
    try {
      const preview = await alice.api.get(`/databases/${shop.id}/plan-change/preview?plan=starter-512`);
      const changed = await alice.api.post(`/databases/${shop.id}/plan`, { plan: 'starter-512' });

      expect(preview.body).toMatchObject({ allowed: false, reasons: [expect.stringMatching(new RegExp(`client connections; starter-512 allows ${limit}$`))] });
      expect(changed.status).toBe(422);
      expect(changed.body.errors[0]).toMatchObject({ pointer: '/body/plan', detail: expect.stringContaining(`starter-512 allows ${limit}`) });
    } finally {
      await Promise.all(held.map((client) => client.end()));
    }
    expect((await alice.api.get(`/databases/${shop.id}`)).body.plan).toBe('starter-2048');
  });

  it('accepts exactly one of two concurrent changes; the other is 409', async () => {
    const [first, second] = await Promise.all([
      alice.api.post(`/databases/${shop.id}/plan`, { plan: 'starter-1024' }),
      alice.api.post(`/databases/${shop.id}/plan`, { plan: 'starter-1024' }),
    ]);

    expect([first.status, second.status].sort()).toEqual([202, 409]);
    const accepted = first.status === 202 ? first : second;
    const operation = await alice.api.waitForOperation(accepted.body.operation.id);
    expect(operation.status, operation.error).toBe('succeeded');
    expect(await serverSettings()).toEqual(planSettings('starter-1024'));
  });

  it('rolls back when the server fails to start on the new plan: running on the old plan and settings, rows intact', async () => {
    const agent = agentCaller(() => ({ url: runtime.agentUrl }), runtime.agentSecret);
    expect((await agent('PUT', '/v1/faults', { operation: 'startServer', instanceId: shop.id, message: 'disk on fire' })).status).toBe(204);

    const operation = await changePlan(alice.api, 'starter-2048');

    expect(operation.status).toBe('rolled_back');
    expect(operation.error).toMatch(/InstanceFailed: .*disk on fire/);
    expect(operation.steps.map((s: { name: string }) => s.name)).toContain('revert to previous plan');
    expect(operation.steps.find((s: { name: string }) => s.name === 'revert to previous plan').status).toBe('succeeded');
    const database = (await alice.api.get(`/databases/${shop.id}`)).body;
    expect(database).toMatchObject({ plan: 'starter-1024', status: 'running', url: shop.database.url });
    expect(database.activeOperation).toBeUndefined();
    expect(await serverSettings()).toEqual(planSettings('starter-1024'));
    expect(await userTables()).toEqual(rowsBefore);
  });

  it('works from the CLI: plan-preview shows the steps, plan --wait follows the operation to the end', async () => {
    const env = { DBPLANE_CONFIG: join(runtime.dataDir, 'cli-config.json'), DBPLANE_API_URL: runtime.apiUrl, DBPLANE_TOKEN: alice.token };

    const preview = succeeded(await dbplane(['databases', 'plan-preview', 'shop', 'starter-512'], env));
    const changed = succeeded(await dbplane(['databases', 'plan', 'shop', 'starter-512', '--wait'], env));
    const unknown = await dbplane(['databases', 'plan', 'shop', 'enterprise-9'], env);

    expect(preview.stdout).toMatch(/from:\s+starter-1024\nto:\s+starter-512\nallowed:\s+yes/);
    expect(preview.stdout).toContain('1. check disk and connections');
    expect(changed.stdout).toContain('changing shop from starter-1024 to starter-512');
    expect(changed.stdout).toContain('verify plan');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('starter-2048');
    expect((await alice.api.get(`/databases/${shop.id}`)).body.plan).toBe('starter-512');
    expect(await serverSettings()).toEqual(planSettings('starter-512'));
  });

  it('changes starter-512 → business-1024 (a caught-up replica added) → business-2048 → business-1024 (rolling, through a switchover each: no failed write) → starter-512; same URL, rows intact', async () => {
    const up = await changePlan(alice.api, 'business-1024');
    const business = (await alice.api.get(`/databases/${shop.id}`)).body;
    const replica = business.nodes?.find((n: { role: string }) => n.role === 'replica');
    const onReplica = replica && await withConnection(shop.database.url.replace(/:\d+\//, `:${replica.port}/`), shop.password, async (client) => ({
      rows: (await client.query<{ rows: number }>('SELECT (SELECT count(*)::int FROM items) + (SELECT count(*)::int FROM customers) AS rows')).rows[0].rows,
      inRecovery: (await client.query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0].r,
    }));
    await withClient((client) => client.query('CREATE TABLE probe (id int PRIMARY KEY)'));
    const rolled = [];
    for (const [plan, firstId] of [['business-2048', 1], ['business-1024', 100_000]] as const) {
      const before = (await alice.api.get(`/databases/${shop.id}`)).body;
      const probe = probeWrites((n) => withClient((client) => client.query(`INSERT INTO probe VALUES (${n})`)), { firstId });
      const operation = await changePlan(alice.api, plan);
      const seen = await probe.stop();
      const after = (await alice.api.get(`/databases/${shop.id}`)).body;
      const probed = await withClient(async (client) => (await client.query<{ id: number }>(`SELECT id FROM probe WHERE id >= ${firstId} ORDER BY id`)).rows.map((r) => r.id));
      rolled.push({ plan, operation, before, after, seen, probed, settings: await serverSettings() });
    }
    await withClient((client) => client.query('DROP TABLE probe'));
    const down = await changePlan(alice.api, 'starter-512');
    const starter = (await alice.api.get(`/databases/${shop.id}`)).body;

    expect(up.status, up.error).toBe('succeeded');
    expect(up.steps.map((s: { name: string }) => s.name)).toContain('wait until the replica caught up');
    expect(business).toMatchObject({ plan: 'business-1024', status: 'running', url: shop.database.url });
    expect(business.nodes).toEqual([
      { role: 'primary', port: expect.any(Number), status: 'running' },
      { role: 'replica', port: expect.any(Number), status: 'running', lagBytes: expect.any(Number) },
    ]);
    expect(onReplica).toEqual({ rows: rowsBefore.rows, inRecovery: true });
    for (const { plan, operation, before, after, seen, probed, settings } of rolled) {
      expect(operation.status, operation.error).toBe('succeeded');
      expect(operation.steps.map((s: { name: string }) => s.name)).toEqual(expect.arrayContaining(['resize the replica', 'switch over to the replica']));
      // The replica became the primary, the old primary its replica: the same two servers, roles swapped.
      expect(after.nodes.map((n: { port: number }) => n.port)).toEqual(before.nodes.map((n: { port: number }) => n.port).reverse());
      expect(after).toMatchObject({ plan, status: 'running', url: shop.database.url });
      expect(settings, plan).toEqual(planSettings(plan));
      // Every write the probe saw acknowledged is there, none failed, and connections waited less than a few seconds.
      expect(seen.failures, plan).toEqual([]);
      expect(probed, plan).toEqual(seen.acknowledged);
      expect(seen.longestStallMs, plan).toBeLessThan(3_000);
    }
    expect(down.status, down.error).toBe('succeeded');
    expect(starter).toMatchObject({ plan: 'starter-512', status: 'running', url: shop.database.url });
    expect(starter.nodes).toEqual([{ role: 'primary', port: expect.any(Number), status: 'running' }]);
    expect(await userTables()).toEqual(rowsBefore);
  });

  it('creates a database on a business plan with two nodes; a restore in place gives the replica the restored data', async () => {
    const created = await createRunning(bob.api, 'ledger', 'business-1024');
    const database = (await bob.api.get(`/databases/${created.id}`)).body;
    const onLedger = <T>(fn: (client: pg.Client) => Promise<T>, url = created.database.url) => withConnection(url, created.password, fn);
    const count = (client: pg.Client) => client.query<{ n: number }>('SELECT count(*)::int AS n FROM entries').then((r) => r.rows[0].n);
    await onLedger(async (client) => {
      await client.query('CREATE TABLE entries (id int PRIMARY KEY)');
      await client.query('INSERT INTO entries SELECT generate_series(1, 100)');
    });
    const backup = await bob.api.post(`/databases/${created.id}/backups`);
    expect((await bob.api.waitForOperation(backup.body.operation.id)).status).toBe('succeeded');
    await onLedger((client) => client.query('INSERT INTO entries SELECT generate_series(101, 150)'));

    const restore = await bob.api.post(`/databases/${created.id}/restore`, { backupId: backup.body.backup.id, into: 'same' });
    const restored = await bob.api.waitForOperation(restore.body.operation.id, 120_000);
    const replica = await eventually(async () => {
      const node = (await bob.api.get(`/databases/${created.id}`)).body.nodes?.find((n: { role: string }) => n.role === 'replica');
      return node?.status === 'running' && node.lagBytes === 0 ? node : undefined;
    }, 60_000);

    expect(database).toMatchObject({ plan: 'business-1024', status: 'running' });
    expect(database.nodes).toEqual([
      { role: 'primary', port: expect.any(Number), status: 'running' },
      { role: 'replica', port: expect.any(Number), status: 'running', lagBytes: 0 },
    ]);
    expect(restored.status, restored.error).toBe('succeeded');
    expect(await onLedger(count)).toBe(100);
    expect(await onLedger(count, created.database.url.replace(/:\d+\//, `:${replica.port}/`))).toBe(100);
  });
});
