import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ApiClient, apiClient, newTenant } from './helpers/api.ts';
import { connect, createRunning } from './helpers/databases.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/** The databases API end to end: real DynamoDB Local, state machines from the CDK template, real PostgreSQL. */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let admin: ApiClient;
let alice: Awaited<ReturnType<typeof newTenant>>;
let bob: Awaited<ReturnType<typeof newTenant>>;


beforeAll(async () => {
  runtime = await startTestRuntime({ agentFaults: true });
  admin = apiClient(runtime.apiUrl, runtime.adminToken);
  alice = await newTenant(admin, runtime.apiUrl, 'alice');
  bob = await newTenant(admin, runtime.apiUrl, 'bob');
});

afterAll(async () => {
  await runtime?.stop();
});

describe('a database, created and deleted', () => {
  let shop: Awaited<ReturnType<typeof createRunning>>;

  beforeAll(async () => {
    shop = await createRunning(alice.api, 'shop');
  });

  it('provisions a real PostgreSQL server that takes writes with the role and password given once', async () => {
    expect(shop.database.status).toBe('running');
    expect(shop.database.url).toMatch(/^postgresql:\/\/shop@127\.0\.0\.1:\d+\/shop$/);
    expect(JSON.stringify(shop.database)).not.toContain(shop.password);
    const client = await connect(shop.database.url, shop.password);
    try {
      await client.query('create table orders (id serial primary key, item text)');
      await client.query("insert into orders (item) values ('tea'), ('cake')");
      const { rows } = await client.query('select item from orders order by id');
      expect(rows.map((r) => r.item)).toEqual(['tea', 'cake']);
      const settings = await client.query("select name, setting, unit from pg_settings where name in ('max_connections', 'shared_buffers')");
      const byName = Object.fromEntries(settings.rows.map((r) => [r.name, r]));
      expect(byName.max_connections.setting).toBe('50');
      // 512 MB plan → a quarter of memory, in 8 kB pages.
      expect(Number(byName.shared_buffers.setting) * 8).toBe(128 * 1024);
    } finally {
      await client.end();
    }
  });

  it('refuses a wrong password', async () => {
    await expect(connect(shop.database.url, 'not-the-password')).rejects.toThrow(/password authentication failed/);
  });

  it('records the provisioning steps with timings', () => {
    expect(shop.operation.kind).toBe('provision');
    expect(shop.operation.steps.map((s: { name: string }) => s.name)).toEqual([
      'create data key', 'create server', 'wait until healthy', 'add replica', 'wait until the replica caught up',
    ]);
    for (const step of shop.operation.steps) {
      expect(step.status).toBe('succeeded');
      expect(Date.parse(step.finishedAt)).toBeGreaterThanOrEqual(Date.parse(step.startedAt));
    }
  });

  it('lists the database for its owner only, and finds it by name', async () => {
    const mine = await alice.api.get('/databases');
    expect(mine.body.databases.map((d: { name: string }) => d.name)).toContain('shop');
    const theirs = await bob.api.get('/databases');
    expect(theirs.body.databases).toEqual([]);
    const byName = await alice.api.get('/databases/shop');
    expect(byName.body.id).toBe(shop.id);
  });

  it('answers 404 to another account on every database route', async () => {
    const paths = [`/databases/${shop.id}`, '/databases/shop', `/databases/${shop.id}/operations`, `/databases/${shop.id}/events`, `/operations/${shop.operation.id}`];
    for (const path of paths) expect((await bob.api.get(path)).status, path).toBe(404);
    expect((await bob.api.delete(`/databases/${shop.id}`)).status).toBe(404);
    expect((await alice.api.get(`/databases/${shop.id}`)).body.status).toBe('running');
  });

  it('keeps an audit trail from the event bus', async () => {
    await runtime.drainEvents();
    const { body } = await alice.api.get(`/databases/${shop.id}/events`);
    const types = body.events.map((e: { type: string }) => e.type);
    expect(types).toContain('dbplane.operation.finished');
    expect(body.events.filter((e: { type: string }) => e.type === 'dbplane.database.status-changed').map((e: any) => e.detail.to)).toEqual(['running', 'creating']);
  });

  it('refuses a second operation while one holds the lock: concurrent deletes, one wins', async () => {
    const other = await createRunning(alice.api, 'racer');
    const [first, second] = await Promise.all([alice.api.delete(`/databases/${other.id}`), alice.api.delete(`/databases/${other.id}`)]);
    const statuses = [first.status, second.status].sort();
    expect(statuses).toEqual([202, 409]);
    const loser = first.status === 409 ? first : second;
    const winner = first.status === 202 ? first : second;
    expect(loser.headers.get('content-type')).toBe('application/problem+json');
    expect(loser.body.detail).toContain(winner.body.operation.id);
    expect((await alice.api.waitForOperation(winner.body.operation.id)).status).toBe('succeeded');
  });

  it('deletes: stops the server, removes its data, keeps the operation as an audit', async () => {
    const port = new URL(shop.database.url).port;
    const deleted = await alice.api.delete(`/databases/${shop.id}`);
    expect(deleted.status).toBe(202);
    const operation = await alice.api.waitForOperation(deleted.body.operation.id);
    expect(operation.status).toBe('succeeded');
    expect((await alice.api.get(`/databases/${shop.id}`)).status).toBe(404);
    expect((await alice.api.get(`/operations/${operation.id}`)).body.kind).toBe('deprovision');
    const agent = await fetch(`${runtime.agentUrl}/v1/instances/${shop.id}`, { headers: { authorization: `Bearer ${runtime.agentSecret}` } });
    expect(agent.status).toBe(404);
    await expect(connect(`postgresql://shop@127.0.0.1:${port}/shop`, shop.password)).rejects.toThrow();
    // The name is free again.
    const again = await alice.api.post('/databases', { name: 'shop', engine: 'postgresql', plan: 'starter-512' });
    expect(again.status).toBe(202);
    await alice.api.waitForOperation(again.body.operation.id);
  });
});

describe('provisioning that fails', () => {
  it('ends failed with the reason, removes what it created and releases the lock', async () => {
    const created = await alice.api.post('/databases', { name: 'doomed', engine: 'postgresql', plan: 'starter-512' });
    // The agent's fault hook: the server of this database will not start.
    const fault = await fetch(`${runtime.agentUrl}/v1/faults`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${runtime.agentSecret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ operation: 'startServer', instanceId: created.body.database.id, message: 'disk on fire' }),
    });
    expect(fault.status).toBe(204);
    const operation = await alice.api.waitForOperation(created.body.operation.id);
    expect(operation.status).toBe('failed');
    expect(operation.error).toContain('disk on fire');
    const database = await alice.api.get(`/databases/${created.body.database.id}`);
    expect(database.body.status).toBe('failed');
    expect(database.body.activeOperation).toBeUndefined();
    const agent = await fetch(`${runtime.agentUrl}/v1/instances/${created.body.database.id}`, { headers: { authorization: `Bearer ${runtime.agentSecret}` } });
    expect(agent.status).toBe(404);
    // Released: the failed database can be deleted.
    const deleted = await alice.api.delete(`/databases/${created.body.database.id}`);
    expect(deleted.status).toBe(202);
    expect((await alice.api.waitForOperation(deleted.body.operation.id)).status).toBe('succeeded');
  });
});

describe('idempotency', () => {
  it('replays the first answer for the same key and starts nothing new', async () => {
    const body = { name: 'replayed', engine: 'postgresql', plan: 'starter-512' };
    const first = await alice.api.post('/databases', body, { 'idempotency-key': 'create-replayed' });
    const second = await alice.api.post('/databases', body, { 'idempotency-key': 'create-replayed' });
    expect(first.status).toBe(202);
    expect(second.status).toBe(202);
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(second.body.database.id).toBe(first.body.database.id);
    const { body: list } = await alice.api.get('/databases');
    expect(list.databases.filter((d: { name: string }) => d.name === 'replayed')).toHaveLength(1);
    await alice.api.waitForOperation(first.body.operation.id);
  });

  it('refuses the same key with a different body (422)', async () => {
    await alice.api.post('/databases', { name: 'keyed', engine: 'postgresql', plan: 'starter-512' }, { 'idempotency-key': 'k-1' });
    const other = await alice.api.post('/databases', { name: 'keyed-2', engine: 'postgresql', plan: 'starter-512' }, { 'idempotency-key': 'k-1' });
    expect(other.status).toBe(422);
  });

  it('keeps keys per account', async () => {
    const body = { name: 'same-key', engine: 'postgresql', plan: 'starter-512' };
    const a = await alice.api.post('/databases', body, { 'idempotency-key': 'shared' });
    const b = await bob.api.post('/databases', body, { 'idempotency-key': 'shared' });
    expect(a.status).toBe(202);
    expect(b.status).toBe(202);
    expect(b.body.database.id).not.toBe(a.body.database.id);
  });
});
