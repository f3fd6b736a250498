import { afterAll, beforeAll, describe, expect, it, type ExpectStatic } from 'vitest';
import { eventually } from './helpers/agent.ts';
import { apiClient, newTenant } from './helpers/api.ts';
import { connect, createRunning, userTablesChecksum, withConnection } from './helpers/databases.ts';
import { probeWrites } from './helpers/probe.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/**
 * Engine upgrades end to end on real servers: the host has PostgreSQL 16.13 and 16.14 side by side, so a
 * minor upgrade really swaps the binaries under the data; 15, 17 and 18 are there too, and Debian's pg_dump 15, so
 * a 15 database really moves to 17 by blue/green (a 16 one cannot: no pg_dump 16 here to copy its schema).
 */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let alice: Awaited<ReturnType<typeof newTenant>>;
let bob: Awaited<ReturnType<typeof newTenant>>;

type Database = Awaited<ReturnType<typeof createRunning>>;

const serverVersion = (db: Database, url = db.database.url) =>
  withConnection(url, db.password, async (client) => (await client.query<{ server_version: string }>('SHOW server_version')).rows[0].server_version);

async function withRows(db: Database) {
  await withConnection(db.database.url, db.password, async (client) => {
    await client.query('CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL)');
    await client.query('INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 3000) g');
    await client.query('CREATE TABLE probe (id int PRIMARY KEY)');
  });
  return withConnection(db.database.url, db.password, userTablesChecksum);
}

beforeAll(async () => {
  runtime = await startTestRuntime();
  const admin = apiClient(runtime.apiUrl, runtime.adminToken);
  alice = await newTenant(admin, runtime.apiUrl, 'alice');
  bob = await newTenant(admin, runtime.apiUrl, 'bob');
}, 60_000);

afterAll(async () => {
  await runtime?.stop();
});

describe('upgrade targets and the report', () => {
  let shop: Database;
  beforeAll(async () => {
    shop = await createRunning(alice.api, 'shop', 'starter-512', '16.13');
  }, 60_000);

  it('lists later versions only: the later minor (available) and later majors (not available without a pg_dump 16)', async () => {
    const { status, body } = await alice.api.get(`/databases/${shop.id}/upgrades`);

    expect(status).toBe(200);
    expect(body.current).toBe('16.13');
    expect(body.targets.map((t: { version: string }) => t.version)).toEqual(['18.4', '17.10', '16.14']);
    expect(body.targets.find((t: { version: string }) => t.version === '16.14')).toMatchObject({ kind: 'minor', strategy: 'restart', available: true, endOfLife: '2028-11-09' });
    expect(body.targets.find((t: { version: string }) => t.version === '17.10')).toMatchObject({
      kind: 'major', strategy: 'logical', available: false, reason: expect.stringContaining('no pg_dump as new as PostgreSQL 16'),
    });
  });

  it('reports on the live database without changing it: a clean database may go to 16.14 now', async () => {
    const { status, body } = await alice.api.get(`/databases/${shop.id}/upgrades/report?version=16`);

    expect(status, JSON.stringify(body)).toBe(200);
    expect(body).toMatchObject({ from: '16.13', version: '16.14', kind: 'minor', allowed: true, blocking: [], warnings: [] });
    expect(body.steps.join('\n')).toContain('16.14');
    expect((await alice.api.get(`/databases/${shop.id}`)).body).toMatchObject({ version: '16.13', status: 'running' });
    expect(await serverVersion(shop)).toBe('16.13');
  });

  it('refuses a downgrade or an unknown version with 422 listing the targets, and a major the host cannot run with the reason', async () => {
    const down = await alice.api.post(`/databases/${shop.id}/upgrade`, { version: '15' });
    const unknown = await alice.api.get(`/databases/${shop.id}/upgrades/report?version=16.99`);
    const major = await alice.api.post(`/databases/${shop.id}/upgrade`, { version: '17' });
    const bad = await alice.api.post(`/databases/${shop.id}/upgrade`, { version: 'latest', when: 'soon' });

    expect(down.status).toBe(422);
    expect(down.headers.get('content-type')).toBe('application/problem+json');
    expect(down.body.errors).toEqual([{ pointer: '/body/version', detail: 'one of: 18.4, 17.10, 16.14' }]);
    expect(unknown.status).toBe(422);
    expect(unknown.body.errors[0].pointer).toBe('/query/version');
    expect(major.status).toBe(422);
    expect(major.body.detail).toMatch(/no pg_dump as new as PostgreSQL 16/);
    expect(bad.status).toBe(400);
    expect(bad.body.errors.map((e: { pointer: string }) => e.pointer).sort()).toEqual(['/body/version', '/body/when']);
    expect((await alice.api.get(`/databases/${shop.id}/operations`)).body.operations.map((o: { kind: string }) => o.kind)).toEqual(['provision']);
  });

  it("answers 404 for another account's database", async () => {
    expect((await bob.api.get(`/databases/${shop.id}/upgrades`)).status).toBe(404);
    expect((await bob.api.get(`/databases/${shop.id}/upgrades/report?version=16.14`)).status).toBe(404);
    expect((await bob.api.post(`/databases/${shop.id}/upgrade`, { version: '16.14' })).status).toBe(404);
  });

  it('queues an upgrade for the maintenance window and starts nothing', async () => {
    const queued = await alice.api.post(`/databases/${shop.id}/upgrade`, { version: '16.14', when: 'maintenance_window' });

    expect(queued.status, JSON.stringify(queued.body)).toBe(202);
    expect(queued.body.operation).toBeUndefined();
    expect(queued.body.database.pendingUpgrade).toEqual({ version: '16.14', requestedAt: expect.any(String), maintenanceId: expect.any(String) });
    expect((await alice.api.get(`/databases/${shop.id}/operations`)).body.operations).toHaveLength(1);
  });
});

/**
 * Upgrades `db` to `version` through the API while a probe writes through its URL every 50 ms, and checks what any
 * upgrade must leave: succeeded, a second request meanwhile refused (409), the version of record and the same URL,
 * every node on the new version, no failed or lost write, the rows of before, the upgraded event and a completed
 * post-upgrade base backup. Answers the operation.
 */
async function upgradeWhileWriting(expect: ExpectStatic, db: Database, version: string, to: string): Promise<any> {
  const from: string = db.database.version;
  const tablesBefore = await withRows(db);
  const probe = probeWrites(async (n) => {
    const client = await connect(db.database.url, db.password);
    // A session ended after its write committed (a cutover ends the sessions left on the old server) is no failed write.
    client.on('error', () => undefined);
    try {
      await client.query(`INSERT INTO probe VALUES (${n})`);
    } finally {
      await client.end().catch(() => undefined);
    }
  }, { everyMs: 50 });

  const started = await alice.api.post(`/databases/${db.id}/upgrade`, { version });
  expect(started.status, JSON.stringify(started.body)).toBe(202);
  const concurrent = await alice.api.post(`/databases/${db.id}/upgrade`, { version });
  const operation = await alice.api.waitForOperation(started.body.operation.id, 240_000);
  const seen = await probe.stop();
  const after = (await alice.api.get(`/databases/${db.id}`)).body;

  expect(concurrent.status).toBe(409);
  expect(operation.status, operation.error).toBe('succeeded');
  expect(after).toMatchObject({ version: to, status: 'running', url: db.database.url });
  expect(await serverVersion(db)).toBe(to);
  for (const node of after.nodes) expect(await serverVersion(db, db.database.url.replace(/:\d+\//, `:${node.port}/`)), node.role).toBe(to);
  expect(seen.failures).toEqual([]);
  const probed = await withConnection(db.database.url, db.password, async (client) => (await client.query<{ id: number }>('SELECT id FROM probe ORDER BY id')).rows.map((r) => r.id));
  expect(probed).toEqual(seen.acknowledged);
  expect(seen.longestStallMs).toBeLessThan(3_000);
  const tablesAfter = await withConnection(db.database.url, db.password, userTablesChecksum);
  expect(tablesAfter['public.items']).toEqual(tablesBefore['public.items']);
  await runtime.drainEvents();
  const { events } = (await alice.api.get(`/databases/${db.id}/events`)).body;
  expect(events.find((e: { type: string }) => e.type === 'dbplane.database.upgraded')).toMatchObject({ detail: { from, to } });
  // After a major upgrade, this proves the new server archives into the database's archive.
  const backup = await eventually(async () => {
    const { backups } = (await alice.api.get(`/databases/${db.id}/backups`)).body;
    return backups.find((b: { kind: string; status: string }) => b.kind === 'post_upgrade' && b.status === 'completed');
  }, 90_000);
  expect(backup.version).toBe(to);
  return operation;
}

describe('minor upgrades on real servers', () => {
  for (const plan of ['starter-512', 'business-1024']) {
    it.concurrent(`${plan}: 16.13 → 16.14 through the same URL, every row kept, no failed write; version of record, event, fresh base backup`, async ({ expect }) => {
      const db = await createRunning(alice.api, `minor-${plan}`, plan, '16.13');

      const operation = await upgradeWhileWriting(expect, db, '16.14', '16.14');

      expect(operation.input).toEqual({ fromVersion: '16.13', toVersion: '16.14', strategy: 'restart' });
    }, 300_000);
  }
});

describe('major upgrades on real servers (blue/green)', () => {
  // Two nodes: the replica is copied afresh from the new primary after the cutover.
  for (const plan of ['starter-512', 'business-1024']) {
    it.concurrent(`${plan}: 15 → 17 through the same URL, every row kept, no failed write; version of record, event, fresh base backup`, async ({ expect }) => {
      const db = await createRunning(alice.api, `major-${plan}`, plan, '15');
      const report = await alice.api.get(`/databases/${db.id}/upgrades/report?version=17`);
      expect(report.body).toMatchObject({ from: db.database.version, version: '17.10', kind: 'major', strategy: 'logical', available: true, allowed: true, blocking: [] });

      const operation = await upgradeWhileWriting(expect, db, '17', '17.10');

      expect(operation.input).toEqual({ fromVersion: db.database.version, toVersion: '17.10', strategy: 'logical' });
      expect(operation.steps.map((s: { name: string }) => s.name)).toEqual(expect.arrayContaining(['cut over to the new server', 'verify the upgrade']));
      // What the cutover compared on both servers while clients were held: items and probe.
      expect(operation.result).toMatchObject({ heldMs: expect.any(Number), tables: 2 });
      expect((await alice.api.get(`/databases/${db.id}`)).body.nodes.map((n: { role: string }) => n.role)).toEqual(plan === 'business-1024' ? ['primary', 'replica'] : ['primary']);
    }, 360_000);
  }
});
