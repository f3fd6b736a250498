import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { DynamoDBDocumentClient, PutCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventPublisher } from '../functions/core/events.ts';
import { expectedSeconds, type MaintenanceDeps, runMaintenanceDispatcher } from '../functions/core/maintenance.ts';
import { type Maintenance, newMaintenance } from '../functions/core/maintenance-model.ts';
import { endMaintenance } from '../functions/core/maintenance-steps.ts';
import { MaintenanceStore, maintenanceItem } from '../functions/core/maintenance-store.ts';
import { hourMs, type MaintenanceWindow, weekdays } from '../functions/core/maintenance-window.ts';
import type { Database } from '../functions/core/model.ts';
import { Store } from '../functions/core/store.ts';
import { Workflows } from '../functions/core/workflows.ts';
import { localDynamoClient } from '../local/dynamodb.ts';
import { eventually } from './helpers/agent.ts';
import { apiClient, newTenant } from './helpers/api.ts';
import { dbplane, succeeded } from './helpers/cli.ts';
import { createRunning, runningRecord, withConnection } from './helpers/databases.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/**
 * Maintenance windows with an injected clock: the dispatcher runs at the instant its scheduled event says, and the
 * Maintenance workflow carries that clock on, so a test dispatches into any week. Real servers where an operation
 * really runs; database records written straight to the table where only the dispatching is under test.
 */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let alice: Awaited<ReturnType<typeof newTenant>>;
let bob: Awaited<ReturnType<typeof newTenant>>;
let store: Store;
let maintenance: MaintenanceStore;
/** Writes items straight into the table; its own base client, so its marshalling options are its own. */
let doc: DynamoDBDocumentClient;

beforeAll(async () => {
  runtime = await startTestRuntime({ stepFaults: true });
  const admin = apiClient(runtime.apiUrl, runtime.adminToken);
  [alice, bob] = await Promise.all([newTenant(admin, runtime.apiUrl, 'alice'), newTenant(admin, runtime.apiUrl, 'bob')]);
  const client = localDynamoClient(runtime.dynamoEndpoint);
  store = new Store(client, runtime.tableName);
  maintenance = new MaintenanceStore(client, runtime.tableName);
  doc = DynamoDBDocumentClient.from(localDynamoClient(runtime.dynamoEndpoint), { marshallOptions: { removeUndefinedValues: true } });
}, 60_000);

afterAll(async () => {
  await runtime?.stop();
});

/** A window on the weekday two days from now, so its next occurrence is in the future whatever the real time. */
function windowInTwoDays(hour: number, durationHours: number): MaintenanceWindow {
  return { day: weekdays[(new Date().getUTCDay() + 2) % 7], hour, durationHours };
}

/** A running database record of alice's with no server behind it: enough for what the dispatcher decides. */
const recordOnly = (name: string, window: MaintenanceWindow) => runningRecord(store, alice.accountId, name, window);

/** An operator's upgrade for `database`, noticed now, planned in its next window at least 24 h away. */
async function operatorItem(database: Database, fields: Partial<Maintenance> = {}): Promise<Maintenance> {
  const now = new Date();
  const item = {
    ...newMaintenance(database, {
      kind: 'upgrade', source: 'operator', target: { version: '16.14' }, status: 'notified',
      notBefore: new Date(now.getTime() + 24 * hourMs).toISOString(), notifiedAt: now.toISOString(),
    }, now),
    ...fields,
  };
  await doc.send(new PutCommand({ TableName: runtime.tableName, Item: maintenanceItem(item) }));
  return item;
}

/** The dispatcher's domain function with the workflow boundary stubbed: records each execution name it is asked to start. */
function stubbedDispatcher() {
  const started: string[] = [];
  const workflows = { startMaintenance: async (_input: unknown, name: string) => { started.push(name); return `arn:${name}`; } } as unknown as Workflows;
  const deps: MaintenanceDeps = { store, workflows, events: new EventPublisher(), maintenance };
  return { started, tick: (at: Date) => runMaintenanceDispatcher(deps, at) };
}

const plus = (iso: string, ms: number) => new Date(Date.parse(iso) + ms);

/** Takes an item out of the dispatcher's index, so the next test's ticks see only their own. */
async function cancel(item: Maintenance) {
  await maintenance.transition(item, { from: ['notified', 'queued', 'running'] }, { status: 'cancelled', updatedAt: new Date().toISOString() }, { reason: 'test over' });
}

describe('the maintenance window', () => {
  let shop: Awaited<ReturnType<typeof createRunning>>;
  beforeAll(async () => {
    shop = await createRunning(alice.api, 'shop', 'starter-512', '16.13');
  }, 60_000);

  it('gives a new database a night window of 8 hours, and shows its next occurrence', async () => {
    const { status, body } = await alice.api.get('/databases/shop/maintenance-window');

    expect(status).toBe(200);
    expect(body.window).toEqual(shop.database.maintenanceWindow);
    expect(body.window.hour >= 21 || body.window.hour <= 5).toBe(true);
    expect(body.window.durationHours).toBe(8);
    expect(Date.parse(body.nextEnd) - Date.parse(body.nextStart)).toBe(8 * hourMs);
  });

  it('is set with PUT; a bad weekday, hour or duration is a 400 naming the field; another account gets 404', async () => {
    const set = await alice.api.call('PUT', '/databases/shop/maintenance-window', { day: 'sunday', hour: 2, durationHours: 4 });
    const badDay = await alice.api.call('PUT', '/databases/shop/maintenance-window', { day: 'caturday', hour: 2 });
    const badHour = await alice.api.call('PUT', '/databases/shop/maintenance-window', { day: 'sunday', hour: 24 });
    const badDuration = await alice.api.call('PUT', '/databases/shop/maintenance-window', { day: 'sunday', hour: 2, durationHours: 25 });
    const foreign = await bob.api.call('PUT', `/databases/${shop.id}/maintenance-window`, { day: 'sunday', hour: 2 });

    expect(set.status).toBe(200);
    expect(set.body).toMatchObject({ window: { day: 'sunday', hour: 2, durationHours: 4 } });
    expect(new Date(set.body.nextStart).getUTCDay()).toBe(0);
    expect([badDay.status, badDay.body.errors.map((e: { pointer: string }) => e.pointer)]).toEqual([400, ['/body/day']]);
    expect([badHour.status, badHour.body.errors.map((e: { pointer: string }) => e.pointer)]).toEqual([400, ['/body/hour']]);
    expect([badDuration.status, badDuration.body.errors.map((e: { pointer: string }) => e.pointer)]).toEqual([400, ['/body/durationHours']]);
    expect(foreign.status).toBe(404);
    expect((await bob.api.get(`/databases/${shop.id}/maintenance`)).status).toBe(404);
    expect((await alice.api.get('/databases/shop/maintenance-window')).body.window).toEqual({ day: 'sunday', hour: 2, durationHours: 4 });
  });

  it('runs a queued minor upgrade in the window on the real server, not before it, and only once', async () => {
    const window = windowInTwoDays(3, 4);
    await alice.api.call('PUT', '/databases/shop/maintenance-window', window);
    const queued = await alice.api.post('/databases/shop/upgrade', { version: '16.14', when: 'maintenance_window' });
    expect(queued.status, JSON.stringify(queued.body)).toBe(202);
    const maintenanceId = queued.body.database.pendingUpgrade.maintenanceId;
    const [item] = (await alice.api.get('/databases/shop/maintenance')).body.upcoming;
    expect(item).toMatchObject({ id: maintenanceId, kind: 'upgrade', source: 'customer', status: 'queued' });
    expect(new Date(item.windowStart).getUTCHours()).toBe(3);
    expect(Date.parse(item.windowStart)).toBeGreaterThan(Date.now());

    const before = await runtime.fireSchedule('MaintenanceDispatcher', plus(item.windowStart, -10 * 60_000));
    expect(before).toMatchObject({ started: 0 });
    expect((await alice.api.get(`/databases/shop/maintenance/${maintenanceId}`)).body.status).toBe('queued');

    const inside = plus(item.windowStart, 30 * 60_000);
    expect(await runtime.fireSchedule('MaintenanceDispatcher', inside)).toMatchObject({ due: 1, started: 1 });
    expect(await runtime.fireSchedule('MaintenanceDispatcher', plus(inside.toISOString(), 5 * 60_000))).toMatchObject({ started: 0 });

    const done = await eventually(async () => {
      const { body } = await alice.api.get(`/databases/shop/maintenance/${maintenanceId}`);
      return ['done', 'failed'].includes(body.status) ? body : undefined;
    }, 90_000);
    expect(done.status, done.reason).toBe('done');
    expect(done.history.map((h: { to: string }) => h.to)).toEqual(['queued', 'running', 'done']);
    const operation = await alice.api.waitForOperation(done.operationId);
    expect(operation).toMatchObject({ kind: 'upgrade', status: 'succeeded', input: { fromVersion: '16.13', toVersion: '16.14' } });
    expect(Date.parse(operation.createdAt)).toBeGreaterThanOrEqual(inside.getTime());
    const database = (await alice.api.get('/databases/shop')).body;
    expect(database.version).toBe('16.14');
    expect(database.pendingUpgrade).toBeUndefined();
    expect(await withConnection(database.url, shop.password, async (c) => (await c.query('SHOW server_version')).rows[0].server_version)).toBe('16.14');
    const upgrades = (await alice.api.get('/databases/shop/operations')).body.operations.filter((o: { kind: string }) => o.kind === 'upgrade');
    expect(upgrades).toHaveLength(1);
    expect(await runtime.fireSchedule('MaintenanceDispatcher', plus(inside.toISOString(), 10 * 60_000))).toMatchObject({ due: 0, started: 0 });
    await runtime.drainEvents();
    const events = (await alice.api.get('/databases/shop/events')).body.events.filter((e: { type: string }) => e.type === 'dbplane.maintenance.status-changed');
    expect(events.map((e: { detail: { to: string } }) => e.detail.to).sort()).toEqual(['done', 'running']);
    expect(events[0].detail).toMatchObject({ accountId: alice.accountId, databaseId: shop.id, maintenanceId });
  }, 120_000);

  it('is shown and set by the CLI: dbplane maintenance window, list, show', async () => {
    const config = join(mkdtempSync(join(tmpdir(), 'dbplane-cli-maintenance-')), 'config.json');
    const env = { DBPLANE_CONFIG: config, DBPLANE_API_URL: runtime.apiUrl, DBPLANE_TOKEN: alice.token };
    const set = succeeded(await dbplane(['maintenance', 'window', 'shop', '--day', 'sunday', '--hour', '2', '--duration', '4'], env));
    const bad = await dbplane(['maintenance', 'window', 'shop', '--day', 'sunday', '--hour', '25'], env);
    const list = succeeded(await dbplane(['maintenance', 'list', 'shop'], env));
    const id = /mt-\S+/.exec(list.stdout)?.[0] ?? 'no id listed';
    const show = succeeded(await dbplane(['maintenance', 'show', 'shop', id], env));
    rmSync(dirname(config), { recursive: true, force: true });

    expect(set.stdout).toContain('sunday 02:00 UTC, 4 h');
    expect([bad.code, bad.stderr]).toEqual([1, expect.stringContaining('/body/hour')]);
    expect(list.stdout).toMatch(/mt-\S+\s+upgrade\s+queued change\s+done/);
    expect(show.stdout).toMatch(/status:\s+done/);
    expect(show.stdout).toMatch(/queued\s+running/);
  });

  it('ends failed with the operation\'s reason when the upgrade fails, the database rolled back and running', async () => {
    const db = await createRunning(alice.api, 'fragile', 'starter-512', '16.13');
    await alice.api.post('/databases/fragile/upgrade', { version: '16.14', when: 'maintenance_window' });
    const [item] = (await alice.api.get('/databases/fragile/maintenance')).body.upcoming;
    const fired = runtime.injectStepFault({ workflow: 'Upgrade', state: 'UpgradeInstance', databaseId: db.id });

    await runtime.fireSchedule('MaintenanceDispatcher', plus(item.windowStart, 60_000));
    const ended = await eventually(async () => {
      const { body } = await alice.api.get(`/databases/fragile/maintenance/${item.id}`);
      return ['done', 'failed'].includes(body.status) ? body : undefined;
    }, 90_000);

    expect(fired()).toBe(true);
    expect(ended.status).toBe('failed');
    expect(ended.reason).toMatch(/rolled_back: InjectedStepFault: injected fault at Upgrade.UpgradeInstance/);
    expect((await alice.api.get('/databases/fragile')).body).toMatchObject({ status: 'running', version: '16.13' });
    expect((await alice.api.get('/databases/fragile')).body.pendingUpgrade).toBeUndefined();
  }, 120_000);
});

describe('the dispatcher', () => {
  it('starts nothing outside the window, and moves what no longer fits in what is left of it to the next one', async () => {
    const database = await recordOnly('short-left', windowInTwoDays(1, 2));
    const item = await operatorItem(database);
    const { tick, started } = stubbedDispatcher();

    expect(await tick(plus(item.windowStart, -60_000))).toMatchObject({ due: 0, started: 0 });
    // 10 minutes left of the window; the default expectation for an upgrade is 15.
    const late = plus(item.windowEnd, -10 * 60_000);
    expect(await tick(late)).toMatchObject({ due: 1, moved: 1, started: 0 });

    const moved = (await maintenance.get(database.id, item.id))!;
    expect(moved.status).toBe('notified');
    expect(Date.parse(moved.windowStart) - Date.parse(item.windowStart)).toBe(7 * 24 * hourMs);
    expect(moved.reason).toMatch(/10 min left in the window; it is expected to take 15 min/);
    expect(await tick(plus(late.toISOString(), 5 * 60_000))).toMatchObject({ due: 0 });
    expect(started).toEqual([]);
    await cancel(moved);
  });

  it('never starts the operation once the window has closed: the workflow re-checks at the dispatcher\'s clock and requeues', async () => {
    const database = await recordOnly('too-late', windowInTwoDays(6, 2));
    const item = await operatorItem(database);
    // Dispatched a minute before the window closed, its workflow starting two minutes later (a slow start).
    const dispatched = await maintenance.transition(item, { from: ['notified'] }, {
      status: 'running', attempts: 1, updatedAt: new Date().toISOString(),
      dispatch: { instant: plus(item.windowEnd, -60_000).toISOString(), realAt: new Date(Date.now() - 120_000).toISOString() },
    }, {});
    await new Workflows().startMaintenance({ maintenanceId: item.id, databaseId: database.id }, `${item.id}-1`);

    const requeued = await eventually(async () => {
      const found = await maintenance.get(database.id, item.id);
      return found?.status === 'queued' ? found : undefined;
    });
    expect(dispatched?.status).toBe('running');
    expect(requeued.reason).toMatch(/MaintenanceWindowClosed: the window closed before it could start/);
    expect(requeued.operationId).toBeUndefined();
    expect(Date.parse(requeued.windowStart)).toBeGreaterThan(Date.parse(item.windowEnd));
    expect((await store.listOperations(database.id)).map((o) => o.kind)).toEqual(['provision']);
    await cancel(requeued);
  });

  it('plans an operator maintenance at least 24 h after its notice', async () => {
    const database = await recordOnly('noticed', { day: weekdays[new Date().getUTCDay()], hour: new Date().getUTCHours(), durationHours: 24 });
    const item = await operatorItem(database);

    // The window is open now, but the notice went out now: the next occurrence, a week away.
    expect(Date.parse(item.windowStart) - Date.parse(item.notifiedAt!)).toBeGreaterThanOrEqual(24 * hourMs);
    expect(Date.parse(item.windowStart) - Date.now()).toBeGreaterThan(6 * 24 * hourMs);
  });

  it('starts an item once, however many ticks run at the same time or after', async () => {
    const database = await recordOnly('once', windowInTwoDays(4, 8));
    const item = await operatorItem(database);
    const { tick, started } = stubbedDispatcher();
    const at = plus(item.windowStart, 60_000);

    const results = await Promise.all([tick(at), tick(at), tick(at)]);
    await tick(plus(at.toISOString(), 5 * 60_000));

    expect(results.reduce((sum, r) => sum + r.started, 0)).toBe(1);
    expect(new Set(started)).toEqual(new Set([`${item.id}-1`]));
    expect((await maintenance.get(database.id, item.id))).toMatchObject({ status: 'running', attempts: 1, dispatch: { instant: at.toISOString() } });
    await cancel(item);
  });

  it('expects a kind to take the p95 of its past runs, once it has five', () => {
    expect(expectedSeconds('upgrade', undefined)).toBe(15 * 60);
    expect(expectedSeconds('upgrade', [10, 20, 30, 40])).toBe(15 * 60);
    expect(expectedSeconds('upgrade', Array.from({ length: 100 }, (_, i) => i + 1))).toBe(95);
    expect(expectedSeconds('change_plan', [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 600])).toBe(5);
    expect(expectedSeconds('change_plan', [5, 5, 5, 5, 600])).toBe(600);
  });

  it('tries a database busy with another operation again on the next tick', async () => {
    const database = await recordOnly('busy', windowInTwoDays(2, 8));
    const item = await operatorItem(database);
    await store.startOperation({ id: 'op-busy', databaseId: database.id, accountId: database.accountId, kind: 'backup', status: 'running', input: {}, steps: [], createdAt: new Date().toISOString(), updatedAt: new Date().toISOString() }, ['running'], 'running');
    const { tick } = stubbedDispatcher();
    const at = plus(item.windowStart, 60_000);

    expect(await tick(at)).toMatchObject({ due: 1, busy: 1, started: 0 });
    await store.finishOperation({ id: 'op-busy', databaseId: database.id }, { status: 'succeeded', at: new Date().toISOString() }, { status: 'running' });
    expect(await tick(plus(at.toISOString(), 5 * 60_000))).toMatchObject({ due: 1, started: 1 });
    await cancel(item);
  });
});

describe("the customer's controls", () => {
  it('postpones to the following window at most maxPostponements times, then 422 with the limit', async () => {
    const database = await recordOnly('later', windowInTwoDays(22, 8));
    const item = await operatorItem(database);

    const first = await alice.api.post(`/databases/later/maintenance/${item.id}/postpone`);
    const second = await alice.api.post(`/databases/later/maintenance/${item.id}/postpone`);
    const third = await alice.api.post(`/databases/later/maintenance/${item.id}/postpone`);
    const foreign = await bob.api.post(`/databases/${database.id}/maintenance/${item.id}/postpone`);

    expect(first.status, JSON.stringify(first.body)).toBe(200);
    expect(Date.parse(first.body.windowStart) - Date.parse(item.windowStart)).toBe(7 * 24 * hourMs);
    expect(second.body).toMatchObject({ postponements: 2, status: 'notified' });
    expect(third.status).toBe(422);
    expect(third.body.detail).toMatch(/the limit is 2/);
    expect(foreign.status).toBe(404);
  });

  it('does not postpone past the deadline', async () => {
    const database = await recordOnly('deadline', windowInTwoDays(22, 8));
    const item = await operatorItem(database, {});
    await maintenance.transition(item, { from: ['notified'] }, { status: 'notified', deadline: plus(item.windowStart, 24 * hourMs).toISOString(), updatedAt: new Date().toISOString() }, {});

    const refused = await alice.api.post(`/databases/deadline/maintenance/${item.id}/postpone`);
    expect(refused.status).toBe(422);
    expect(refused.body.detail).toMatch(/after the deadline/);
  });

  it('holds maintenance during a freeze period, within the limits; a longer freeze is 422 naming it', async () => {
    const database = await recordOnly('frozen', windowInTwoDays(5, 8));
    const item = await operatorItem(database);
    const from = plus(item.windowStart, -hourMs).toISOString();
    const tooLong = await alice.api.call('PUT', '/account/maintenance-freezes', { periods: [{ from, to: plus(from, 15 * 24 * hourMs).toISOString() }] });
    const set = await alice.api.call('PUT', '/account/maintenance-freezes', { periods: [{ from, to: plus(from, 7 * 24 * hourMs).toISOString(), reason: 'black friday' }] });
    const { tick, started } = stubbedDispatcher();

    const year = new Date(from).getUTCFullYear() + 1;
    const tooMany = await alice.api.call('PUT', '/account/maintenance-freezes', {
      periods: [1, 3, 5].map((month) => ({ from: `${year}-0${month}-01T00:00:00Z`, to: `${year}-0${month}-12T00:00:00Z` })),
    });
    expect([tooLong.status, tooLong.body.errors?.[0]?.pointer]).toEqual([422, '/body/periods/0/to']);
    expect([tooMany.status, tooMany.body.errors?.[0]?.pointer, tooMany.body.detail]).toEqual([422, '/body/periods', `33 days of freezes in ${year}; at most 30 a year`]);
    expect(set.status).toBe(200);
    expect((await alice.api.get('/account/maintenance-freezes')).body.periods).toHaveLength(1);
    expect((await bob.api.get('/account/maintenance-freezes')).body.periods).toEqual([]);
    expect(await tick(plus(item.windowStart, 60_000))).toMatchObject({ due: 1, frozen: 1, started: 0 });
    expect(started).toEqual([]);
    await alice.api.call('PUT', '/account/maintenance-freezes', { periods: [] });
    await cancel(item);
  });

  it('applies a waiting maintenance now through the dispatcher path, outside its window', async () => {
    const database = await recordOnly('eager', windowInTwoDays(23, 8));
    const item = await operatorItem(database);

    const applied = await alice.api.post(`/databases/eager/maintenance/${item.id}/apply-now`);
    expect(applied.status, JSON.stringify(applied.body)).toBe(202);
    expect(applied.body).toMatchObject({ status: 'running', attempts: 1, applyNow: true });
    // No server behind this record: the operation cannot start, and the item says why.
    const ended = await eventually(async () => {
      const found = await maintenance.get(database.id, item.id);
      return found?.status === 'failed' ? found : undefined;
    });
    expect(ended.reason).toMatch(/Agent/);
    expect((await alice.api.post(`/databases/eager/maintenance/${item.id}/apply-now`)).status).toBe(422);
  });
});

describe("an operator's maintenance in waves", () => {
  const admin = () => apiClient(runtime.apiUrl, runtime.adminToken);

  it('refuses a bad rollout, naming the field, and needs the admin scope', async () => {
    const base = { kind: 'upgrade', to: { version: '16.x' }, target: { databaseIds: ['db-none'] } };
    const decreasing = await admin().post('/admin/maintenance', { ...base, waves: [50, 40] });
    const noVersion = await admin().post('/admin/maintenance', { ...base, to: {} });
    const emptyTarget = await admin().post('/admin/maintenance', { ...base, target: {} });
    const customer = await alice.api.post('/admin/maintenance', base);

    const nobody = await admin().post('/admin/maintenance', base);

    expect([decreasing.status, decreasing.body.errors[0].pointer]).toEqual([400, '/body/waves']);
    expect([nobody.status, nobody.body.errors[0].pointer]).toEqual([422, '/body/target']);
    expect([noVersion.status, noVersion.body.errors[0].pointer]).toEqual([422, '/body/to/version']);
    expect([emptyTarget.status, emptyTarget.body.errors[0].pointer]).toEqual([400, '/body/target']);
    expect(customer.status).toBe(403);
  });

  it('notices the first wave 24 h ahead, plans the next only when it has finished, and halts the rest above the failure threshold', async () => {
    const databases = await Promise.all(['wave-a', 'wave-b', 'wave-c', 'wave-d'].map((name) => recordOnly(name, windowInTwoDays(20, 8))));
    const created = await admin().post('/admin/maintenance', {
      kind: 'upgrade', to: { version: '16.x' }, target: { databaseIds: databases.map((d) => d.id) }, waves: [25, 50, 100], failureThreshold: 0,
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body.waves.map((w: { size: number; status: string }) => [w.size, w.status])).toEqual([[1, 'running'], [1, 'waiting'], [2, 'waiting']]);
    const inWave = async (wave: number) => (await Promise.all(databases.map(async (d) => (await maintenance.list(d.id)).find((i) => i.rolloutId === created.body.id))))
      .filter((i): i is Maintenance => i?.wave === wave);

    const [first] = await inWave(0);
    expect(first).toMatchObject({ status: 'notified', target: { version: '16.14' }, source: 'operator' });
    expect(Date.parse(first.windowStart) - Date.parse(first.notifiedAt!)).toBeGreaterThanOrEqual(24 * hourMs);
    expect((await inWave(1)).map((i) => i.status)).toEqual(['scheduled']);
    await runtime.drainEvents();
    const notice = (await alice.api.get(`/databases/${first.databaseId}/events`)).body.events.find((e: { type: string }) => e.type === 'dbplane.maintenance.scheduled');
    expect(notice.detail).toMatchObject({ accountId: alice.accountId, databaseId: first.databaseId, maintenanceId: first.id, windowStart: first.windowStart });
    expect(Date.parse(notice.detail.windowStart) - Date.parse(notice.at)).toBeGreaterThanOrEqual(24 * hourMs);

    // Wave 1 ends done (its operation recorded as succeeded; no server behind these records).
    const { tick } = stubbedDispatcher();
    expect(await tick(plus(first.windowStart, 60_000))).toMatchObject({ started: 1 });
    const at = new Date().toISOString();
    const operation = { id: `op-wave-${first.id}`, databaseId: first.databaseId, accountId: first.accountId, kind: 'upgrade' as const, status: 'running' as const, input: {}, steps: [], createdAt: at, updatedAt: at };
    await store.startOperation(operation, ['running'], 'running');
    await store.finishOperation(operation, { status: 'succeeded', at }, { status: 'running' });
    await maintenance.setOperation(first, operation.id, at);
    await endMaintenance({ store, maintenance, events: new EventPublisher(), workflows: {} as Workflows }, { maintenanceId: first.id, databaseId: first.databaseId });

    const [second] = await inWave(1);
    expect(second.status).toBe('notified');
    expect(Date.parse(second.windowStart) - Date.parse(second.notifiedAt!)).toBeGreaterThanOrEqual(24 * hourMs);
    expect((await inWave(2)).map((i) => i.status)).toEqual(['scheduled', 'scheduled']);

    // Wave 2 fails for real: the dispatcher starts it, and its operation cannot start on a database without a server.
    await runtime.fireSchedule('MaintenanceDispatcher', plus(second.windowStart, 60_000));
    const failed = await eventually(async () => {
      const found = await maintenance.get(second.databaseId, second.id);
      return found?.status === 'failed' ? found : undefined;
    });
    expect(failed.reason).toBeDefined();

    // The last item of the wave decides, after it ended: wait until the waves left are cancelled.
    const cancelled = await eventually(async () => {
      const items = await inWave(2);
      return items.every((i) => i.status === 'cancelled') ? items : undefined;
    });
    const rollout = (await admin().get(`/admin/maintenance/${created.body.id}`)).body;
    expect(rollout).toMatchObject({ status: 'halted', reason: expect.stringMatching(/wave 2 failed 1 of 1 \(100%\), above the threshold of 0%/) });
    expect(rollout.waves.map((w: { status: string }) => w.status)).toEqual(['finished', 'finished', 'cancelled']);
    expect(cancelled.map((i) => [i.status, i.reason])).toEqual([['cancelled', rollout.reason], ['cancelled', rollout.reason]]);
    await runtime.drainEvents();
    const halted = (await alice.api.get(`/databases/${cancelled[0].databaseId}/events`)).body.events.find((e: { type: string }) => e.type === 'dbplane.maintenance.wave-halted');
    expect(halted.detail).toMatchObject({ accountId: alice.accountId, databaseId: cancelled[0].databaseId, maintenanceId: cancelled[0].id, rolloutId: created.body.id });
  }, 60_000);
});
