import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { DynamoDBDocumentClient, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentClient } from '../functions/core/agent-client.ts';
import { EventPublisher } from '../functions/core/events.ts';
import { type MaintenanceDeps, transition } from '../functions/core/maintenance.ts';
import { type MaintenanceRun } from '../functions/core/maintenance-model.ts';
import { scheduleFleetMaintenance } from '../functions/core/maintenance-rollouts.ts';
import { MaintenanceStore } from '../functions/core/maintenance-store.ts';
import { hourMs, type MaintenanceWindow, weekdays } from '../functions/core/maintenance-window.ts';
import type { Operation } from '../functions/core/model.ts';
import { Store } from '../functions/core/store.ts';
import type { Workflows } from '../functions/core/workflows.ts';
import { localDynamoClient } from '../local/dynamodb.ts';
import { eventually } from './helpers/agent.ts';
import { apiClient, newTenant } from './helpers/api.ts';
import { dbplane, succeeded } from './helpers/cli.ts';
import { createRunning, runningRecord, userTablesChecksum, withConnection } from './helpers/databases.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/**
 * What a maintenance runs, on real servers, with the dispatcher's injected clock: the window checked before each
 * disruptive step of its operation.
 */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let alice: Awaited<ReturnType<typeof newTenant>>;
let store: Store;
let maintenance: MaintenanceStore;
let doc: DynamoDBDocumentClient;

beforeAll(async () => {
  runtime = await startTestRuntime();
  alice = await newTenant(apiClient(runtime.apiUrl, runtime.adminToken), runtime.apiUrl, 'alice');
  const client = localDynamoClient(runtime.dynamoEndpoint);
  store = new Store(client, runtime.tableName);
  maintenance = new MaintenanceStore(client, runtime.tableName);
  // A client of its own: document clients made from one client share its marshalling options.
  doc = DynamoDBDocumentClient.from(localDynamoClient(runtime.dynamoEndpoint));
}, 60_000);

afterAll(async () => {
  await runtime?.stop();
});

/** A window on the weekday two days from now, so its next occurrence is in the future whatever the real time. */
function windowInTwoDays(hour: number, durationHours: number): MaintenanceWindow {
  return { day: weekdays[(new Date().getUTCDay() + 2) % 7], hour, durationHours };
}

const plus = (iso: string, ms: number) => new Date(Date.parse(iso) + ms);

const stepOf = (operation: Operation | undefined, name: string) => operation?.steps.find((s) => s.name === name);

async function finished(databaseId: string, maintenanceId: string, statuses: string[], timeoutMs = 90_000) {
  return eventually(async () => {
    const item = await maintenance.get(databaseId, maintenanceId);
    return item && statuses.includes(item.status) ? item : undefined;
  }, timeoutMs);
}

describe('a maintenance whose window closes while its operation runs', () => {
  it('starts no disruptive step after the close: the plan change rolls back, the item waits for the next window', async () => {
    const steady = await createRunning(alice.api, 'steady', 'business-1024');
    await withConnection(steady.database.url, steady.password, async (c) => {
      await c.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
      await c.query("INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 500) g");
    });
    const rowsBefore = await withConnection(steady.database.url, steady.password, userTablesChecksum);
    await alice.api.call('PUT', '/databases/steady/maintenance-window', windowInTwoDays(1, 8));
    const queued = await alice.api.post('/databases/steady/plan', { plan: 'business-2048', when: 'maintenance_window' });
    expect(queued.status, JSON.stringify(queued.body)).toBe(202);
    const maintenanceId = queued.body.database.pendingPlanChange.maintenanceId as string;
    const item = (await maintenance.get(steady.id, maintenanceId))!;

    // While the first disruptive step restarts the replica (its window check passed), the clock passes the window's
    // end: the operation's clock jumps 8 hours ahead. The steps run in this process, so the agent call is the hook.
    let run: MaintenanceRun | undefined;
    const ensureInstance = AgentClient.prototype.ensureInstance;
    const spy = vi.spyOn(AgentClient.prototype, 'ensureInstance').mockImplementation(async function (this: AgentClient, id, spec, restart) {
      if (id === steady.id && restart === 'replica' && !run) {
        const operationId = (await maintenance.get(steady.id, maintenanceId))!.operationId!;
        run = (await store.getDatabaseOperation(steady.id, operationId))!.input.maintenance as MaintenanceRun;
        await doc.send(new UpdateCommand({
          TableName: runtime.tableName,
          Key: { pk: `DB#${steady.id}`, sk: `OP#${operationId}` },
          UpdateExpression: 'SET #input.#maintenance.#clock.#instant = :later',
          ExpressionAttributeNames: { '#input': 'input', '#maintenance': 'maintenance', '#clock': 'clock', '#instant': 'instant' },
          ExpressionAttributeValues: { ':later': plus(run.clock.instant, 8 * hourMs).toISOString() },
        }));
      }
      return ensureInstance.call(this, id, spec, restart);
    });
    try {
      expect(await runtime.fireSchedule('MaintenanceDispatcher', plus(item.windowStart, 60_000))).toMatchObject({ started: 1 });
      await finished(steady.id, maintenanceId, ['queued', 'done', 'failed']);
    } finally {
      spy.mockRestore();
    }

    const requeued = (await maintenance.get(steady.id, maintenanceId))!;
    expect(run).toMatchObject({ maintenanceId, windowEnd: item.windowEnd });
    const operation = (await store.listOperations(steady.id)).find((o) => o.kind === 'change_plan')!;
    expect(operation.status, operation.error).toBe('rolled_back');
    expect(operation.error).toMatch(/^MaintenanceWindowClosed: the maintenance window closed at .*"switch over to the replica" was not started/);
    expect(stepOf(operation, 'resize the replica')?.status).toBe('succeeded');
    expect(stepOf(operation, 'switch over to the replica')).toMatchObject({ status: 'failed', detail: expect.stringMatching(/window closed/) });
    expect(stepOf(operation, 'resize server')).toBeUndefined();
    expect(requeued).toMatchObject({ status: 'queued', reason: expect.stringMatching(/rolled back: MaintenanceWindowClosed/) });
    expect(requeued.operationId).toBeUndefined();
    expect(Date.parse(requeued.windowStart) - Date.parse(item.windowStart)).toBe(7 * 24 * hourMs);
    expect(requeued.history.map((h) => h.to)).toEqual(['queued', 'running', 'queued']);

    const database = (await alice.api.get('/databases/steady')).body;
    expect(database).toMatchObject({ status: 'running', plan: 'business-1024', url: steady.database.url, pendingPlanChange: { plan: 'business-2048', maintenanceId } });
    expect(database.nodes.map((n: { role: string; status: string }) => [n.role, n.status]).sort()).toEqual([['primary', 'running'], ['replica', 'running']]);
    expect(await withConnection(database.url, steady.password, userTablesChecksum)).toEqual(rowsBefore);
    await runtime.drainEvents();
    const events = (await alice.api.get('/databases/steady/events')).body.events
      .filter((e: { type: string; detail: { maintenanceId?: string } }) => e.type === 'dbplane.maintenance.status-changed' && e.detail.maintenanceId === maintenanceId);
    expect(events.map((e: { detail: { to: string } }) => e.detail.to).sort()).toEqual(['queued', 'running']);
  }, 180_000);
});

describe('a queued change overtaken by the same change applied now', () => {
  it('ends the queued item cancelled, not failed, and runs no second operation', async () => {
    const quick = await createRunning(alice.api, 'quick', 'starter-512', '16.13');
    await alice.api.call('PUT', '/databases/quick/maintenance-window', windowInTwoDays(5, 8));
    const queued = await alice.api.post('/databases/quick/upgrade', { version: '16.14', when: 'maintenance_window' });
    const maintenanceId = queued.body.database.pendingUpgrade.maintenanceId as string;
    const now = await alice.api.post('/databases/quick/upgrade', { version: '16.14' });
    expect((await alice.api.waitForOperation(now.body.operation.id)).status).toBe('succeeded');
    // The upgrade's own backup follows it (started by an event, a moment later): the dispatcher would find the database busy until it ended.
    await eventually(async () => {
      const backupDone = (await store.listOperations(quick.id)).some((o) => o.kind === 'backup' && o.status === 'succeeded');
      return backupDone && !(await alice.api.get('/databases/quick')).body.activeOperation ? true : undefined;
    }, 60_000);
    const item = (await maintenance.get(quick.id, maintenanceId))!;

    expect(await runtime.fireSchedule('MaintenanceDispatcher', plus(item.windowStart, 60_000))).toMatchObject({ started: 1 });
    const ended = await finished(quick.id, maintenanceId, ['done', 'failed', 'cancelled']);

    expect(ended).toMatchObject({ status: 'cancelled', reason: expect.stringMatching(/MaintenanceNotNeeded: the database is on 16.14 already/) });
    expect(ended.operationId).toBeUndefined();
    const database = (await alice.api.get('/databases/quick')).body;
    expect(database).toMatchObject({ status: 'running', version: '16.14' });
    expect(database.pendingUpgrade).toBeUndefined();
    expect((await store.listOperations(quick.id)).filter((o) => o.kind === 'upgrade')).toHaveLength(1);
  }, 120_000);
});

describe('a restart maintenance', () => {
  /** The postmaster's start, a setting and every row, as a client sees them through the database's URL. */
  const observe = (url: string, password: string) => withConnection(url, password, async (c) => ({
    started: (await c.query('SELECT pg_postmaster_start_time()::text AS t')).rows[0].t as string,
    sharedBuffers: (await c.query('SHOW shared_buffers')).rows[0].shared_buffers as string,
    rows: await userTablesChecksum(c),
  }));

  it('restarts the servers on the settings of record in their window (1 node held, 2 nodes rolling): new postmasters, rows kept, same URLs', async () => {
    const [solo, pair] = await Promise.all([createRunning(alice.api, 'solo', 'starter-512'), createRunning(alice.api, 'pair', 'business-1024')]);
    const window = windowInTwoDays(3, 8);
    for (const db of [solo, pair]) {
      await alice.api.call('PUT', `/databases/${db.id}/maintenance-window`, window);
      await withConnection(db.database.url, db.password, (c) => c.query('CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g'));
    }
    // The settings of record change under the running servers, as a catalog change of a plan's settings would.
    for (const [db, plan] of [[solo, 'starter-1024'], [pair, 'business-2048']] as const) {
      await doc.send(new UpdateCommand({
        TableName: runtime.tableName, Key: { pk: `DB#${db.id}`, sk: 'META' }, UpdateExpression: 'SET #plan = :plan', ExpressionAttributeNames: { '#plan': 'plan' }, ExpressionAttributeValues: { ':plan': plan },
      }));
    }
    const before = await Promise.all([observe(solo.database.url, solo.password), observe(pair.database.url, pair.password)]);
    const pairNodesBefore = (await alice.api.get('/databases/pair')).body.nodes;

    const missing = await apiClient(runtime.apiUrl, runtime.adminToken).post('/admin/maintenance', { kind: 'restart', target: {} });
    const created = await apiClient(runtime.apiUrl, runtime.adminToken).post('/admin/maintenance', { kind: 'restart', target: { databaseIds: [solo.id, pair.id] } });
    expect([missing.status, missing.body.errors?.[0]?.pointer]).toEqual([400, '/body/target']);
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body).toMatchObject({ kind: 'restart', waves: [{ size: 2, status: 'running' }] });
    const items = await Promise.all([solo, pair].map(async (db) => (await maintenance.list(db.id)).find((i) => i.rolloutId === created.body.id)!));
    expect(items.map((i) => i.status)).toEqual(['notified', 'notified']);
    expect(items[0].windowStart).toBe(items[1].windowStart);

    expect(await runtime.fireSchedule('MaintenanceDispatcher', plus(items[0].windowStart, 60_000))).toMatchObject({ due: 2, started: 2 });
    const ended = await Promise.all(items.map((i) => finished(i.databaseId, i.id, ['done', 'failed', 'queued'], 120_000)));

    expect(ended.map((i) => [i.status, i.reason])).toEqual([['done', undefined], ['done', undefined]]);
    const operations = await Promise.all(ended.map((i) => store.getDatabaseOperation(i.databaseId, i.operationId!)));
    expect(operations.map((o) => [o?.kind, o?.status])).toEqual([['restart', 'succeeded'], ['restart', 'succeeded']]);
    expect(operations[1]!.steps.map((s) => s.name)).toEqual(expect.arrayContaining(['restart the replica', 'switch over to the replica', 'restart the server']));
    const after = await Promise.all([observe(solo.database.url, solo.password), observe(pair.database.url, pair.password)]);
    for (const [i, db] of [solo, pair].entries()) {
      expect(after[i].started).not.toBe(before[i].started);
      expect(after[i].rows).toEqual(before[i].rows);
      expect((await alice.api.get(`/databases/${db.id}`)).body).toMatchObject({ status: 'running', url: db.database.url });
    }
    expect([after[0].sharedBuffers, after[1].sharedBuffers]).toEqual(['256MB', '512MB']);
    // Rolling: the replica became the primary, and the old primary (restarted) its replica.
    const pairNodesAfter = (await alice.api.get('/databases/pair')).body.nodes;
    const primaryPort = (nodes: { role: string; port: number }[]) => nodes.find((n) => n.role === 'primary')!.port;
    expect(primaryPort(pairNodesAfter)).not.toBe(primaryPort(pairNodesBefore));
    expect((await apiClient(runtime.apiUrl, runtime.adminToken).get(`/admin/maintenance/${created.body.id}`)).body).toMatchObject({ status: 'completed' });
  }, 240_000);
});

describe('database tags and staging-first waves', () => {
  const admin = () => apiClient(runtime.apiUrl, runtime.adminToken);
  const pointers = (body: { errors?: { pointer: string }[] }) => body.errors?.map((e) => e.pointer);

  it('sets tags at creation and with PUT, validated, shown in GET and by the CLI; another account gets 404', async () => {
    const bob = await newTenant(admin(), runtime.apiUrl, 'bob');
    const created = await alice.api.post('/databases', { name: 'tagged', engine: 'postgresql', plan: 'starter-512', tags: ['env=staging', 'pci'] });
    const badTag = await alice.api.post('/databases', { name: 'badtag', engine: 'postgresql', plan: 'starter-512', tags: ['Env=staging'] });
    const twoValues = await alice.api.call('PUT', '/databases/tagged/tags', { tags: ['env=a', 'env=b'] });
    const set = await alice.api.call('PUT', '/databases/tagged/tags', { tags: ['env=prod', 'team=shop/orders'] });
    const foreign = await bob.api.call('PUT', `/databases/${created.body.database.id}/tags`, { tags: ['env=mine'] });

    expect([created.status, created.body.database.tags]).toEqual([202, ['env=staging', 'pci']]);
    expect([badTag.status, pointers(badTag.body)]).toEqual([400, ['/body/tags/0']]);
    expect([twoValues.status, pointers(twoValues.body)]).toEqual([400, ['/body/tags']]);
    expect([set.status, set.body.tags]).toEqual([200, ['env=prod', 'team=shop/orders']]);
    expect(foreign.status).toBe(404);
    expect((await alice.api.get('/databases/tagged')).body.tags).toEqual(['env=prod', 'team=shop/orders']);

    const config = join(mkdtempSync(join(tmpdir(), 'dbplane-cli-tags-')), 'config.json');
    const env = { DBPLANE_CONFIG: config, DBPLANE_API_URL: runtime.apiUrl, DBPLANE_TOKEN: alice.token };
    const tag = succeeded(await dbplane(['databases', 'tag', 'tagged', 'env=staging', 'pci'], env));
    const untag = succeeded(await dbplane(['databases', 'tag', 'tagged', '--remove', 'team'], env));
    const show = succeeded(await dbplane(['databases', 'show', 'tagged'], env));
    rmSync(dirname(config), { recursive: true, force: true });
    expect(tag.stdout).toBe('tagged: team=shop/orders env=staging pci\n');
    expect(untag.stdout).toBe('tagged: env=staging pci\n');
    expect(show.stdout).toMatch(/tags:\s+env=staging pci/);
  }, 60_000);

  it('targets a tag through its index items (kept in step with the tags), and rolls out staging-tagged databases first', async () => {
    const names = ['stage-a', 'stage-b', 'prod-a', 'prod-b'];
    const dbs = await Promise.all(names.map((name) => createRunning(alice.api, name, 'starter-512')));
    for (const db of dbs) {
      await alice.api.call('PUT', `/databases/${db.id}/tags`, { tags: [db.database.name.startsWith('stage') ? 'env=staging' : 'env=prod', 'fleet=test'] });
    }
    // stage-b leaves staging: its index item goes with the tag.
    await alice.api.call('PUT', `/databases/${dbs[1].id}/tags`, { tags: ['env=prod', 'fleet=test'] });
    await alice.api.call('PUT', `/databases/${dbs[1].id}/tags`, { tags: ['env=staging', 'fleet=test'] });
    await alice.api.call('PUT', `/databases/${dbs[0].id}/tags`, { tags: ['env=qa', 'fleet=test'] });
    const staging = await store.databaseIdsByTag('env=staging');
    expect([staging.includes(dbs[0].id), staging.includes(dbs[1].id)]).toEqual([false, true]);

    const byTag = await admin().post('/admin/maintenance', { kind: 'restart', target: { tag: 'env=prod' } });
    const noStaging = await admin().post('/admin/maintenance', { kind: 'restart', target: { tag: 'env=prod' }, stagingTag: 'env=staging' });
    const badTag = await admin().post('/admin/maintenance', { kind: 'restart', target: { tag: 'Env' } });
    expect(byTag.status, JSON.stringify(byTag.body)).toBe(201);
    expect(byTag.body.waves.map((w: { size: number }) => w.size)).toEqual([2]);
    expect([noStaging.status, pointers(noStaging.body)]).toEqual([422, ['/body/stagingTag']]);
    expect([badTag.status, pointers(badTag.body)]).toEqual([400, ['/body/target/tag']]);

    const staged = await admin().post('/admin/maintenance', { kind: 'restart', target: { tag: 'fleet=test' }, stagingTag: 'env=staging', waves: [50, 100] });
    expect(staged.status, JSON.stringify(staged.body)).toBe(201);
    expect(staged.body.waves.map((w: { tag?: string; percent?: number; size: number; status: string }) => [w.tag, w.percent, w.size, w.status]))
      .toEqual([['env=staging', undefined, 1, 'running'], [undefined, 50, 1, 'waiting'], [undefined, 100, 2, 'waiting']]);
    const items = await Promise.all(dbs.map(async (db) => (await maintenance.list(db.id)).find((i) => i.rolloutId === staged.body.id)!));
    expect(items.map((i) => [i.wave === 0, i.status])).toEqual([[false, 'scheduled'], [true, 'notified'], [false, 'scheduled'], [false, 'scheduled']]);
  }, 90_000);
});

describe('a rollout whose creation stops midway', () => {
  it('counts in each wave only the items written, so its waves still finish', async () => {
    const dbs = await Promise.all(['cut-a', 'cut-b', 'cut-c'].map((name) => runningRecord(store, alice.accountId, name, windowInTwoDays(12, 8))));
    // The second item's write fails (a throttled or lost write: DynamoDB Local cannot fail one on demand).
    let writes = 0;
    const failing = Object.assign(Object.create(maintenance) as MaintenanceStore, {
      addWaveMember: (...args: Parameters<MaintenanceStore['addWaveMember']>) => {
        if (++writes === 2) throw new Error('write lost');
        return maintenance.addWaveMember(...args);
      },
    });
    const deps: MaintenanceDeps = { store, maintenance: failing, events: new EventPublisher(), workflows: {} as Workflows };

    await expect(scheduleFleetMaintenance(deps, {
      kind: 'restart', to: {}, target: { databaseIds: dbs.map((d) => d.id) }, waves: [34, 67, 100], failureThreshold: 0.1, maxPostponements: 2,
    })).rejects.toThrow('write lost');

    const [first] = (await Promise.all(dbs.map((d) => maintenance.list(d.id)))).flat();
    const rollout = (await maintenance.getRollout(first.rolloutId!))!;
    expect(rollout.waves.map((w) => [w.size, w.status])).toEqual([[1, 'running'], [0, 'waiting'], [0, 'waiting']]);
    await transition(deps, first, { from: ['notified'] }, { status: 'done', finishedAt: new Date().toISOString() }, new Date());
    expect((await maintenance.getRollout(rollout.id))).toMatchObject({ status: 'completed', waves: [{ status: 'finished' }, { status: 'finished' }, { status: 'finished' }] });
  });
});
