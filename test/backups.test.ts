import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DynamoDBDocumentClient, GetCommand } from '@aws-sdk/lib-dynamodb';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { drillWeekday } from '../functions/core/backups.ts';
import { LocalKeyWrapper } from '../functions/core/keys.ts';
import { localDynamoClient } from '../local/dynamodb.ts';
import { type ApiClient, apiClient, newTenant } from './helpers/api.ts';
import { connect, createRunning } from './helpers/databases.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/** Backups and restores end to end: real agent, real PostgreSQL, encrypted copies in three local zones. */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let alice: Awaited<ReturnType<typeof newTenant>>;
let bob: Awaited<ReturnType<typeof newTenant>>;
let shop: Awaited<ReturnType<typeof createRunning>>;

/** A value no PostgreSQL file would contain by chance: looked for in the stored bytes. */
const marker = 'plaintext-marker-7f3a9c';

async function rows(database: { url: string }, password: string): Promise<string[]> {
  const client = await connect(database.url, password);
  try {
    return (await client.query<{ body: string }>('select body from items order by id')).rows.map((r) => r.body);
  } finally {
    await client.end();
  }
}

async function withClient<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connect(shop.database.url, shop.password);
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function takeBackup(api: ApiClient, database: string) {
  const started = await api.post(`/databases/${database}/backups`);
  expect(started.status, JSON.stringify(started.body)).toBe(202);
  const operation = await api.waitForOperation(started.body.operation.id);
  expect(operation.status, operation.error).toBe('succeeded');
  return (await api.get(`/databases/${database}/backups/${started.body.backup.id}`)).body;
}

/** Restores, then waits for the fresh backup a successful restore starts (it holds the database's lock). */
async function restore(api: ApiClient, database: string, body: Record<string, unknown>) {
  const started = await api.post(`/databases/${database}/restore`, body);
  expect(started.status, JSON.stringify(started.body)).toBe(202);
  const operation = await api.waitForOperation(started.body.operation.id, 120_000);
  await runtime.drainEvents();
  const restored = started.body.database.id as string;
  for (const deadline = Date.now() + 60_000; (await api.get(`/databases/${restored}`)).body.activeOperation;) {
    if (Date.now() > deadline) throw new Error(`database ${restored} stayed busy after its restore`);
    await sleep(100);
  }
  return { started: started.body, operation };
}

async function agentCall(method: string, path: string, body?: unknown) {
  const response = await fetch(`${runtime.agentUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${runtime.agentSecret}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return response.status;
}

/** Every file under the three local zones that belongs to a database. */
function storedFiles(databaseId: string): string[] {
  const root = join(runtime.dataDir, 'agent', 'backups');
  const walk = (dir: string): string[] => readdirSync(dir, { withFileTypes: true })
    .flatMap((entry) => (entry.isDirectory() ? walk(join(dir, entry.name)) : [join(dir, entry.name)]));
  return readdirSync(root).flatMap((zone) => {
    const dir = join(root, zone, databaseId);
    try {
      return walk(dir);
    } catch {
      return [];
    }
  });
}

beforeAll(async () => {
  runtime = await startTestRuntime({ agentFaults: true });
  const admin = apiClient(runtime.apiUrl, runtime.adminToken);
  alice = await newTenant(admin, runtime.apiUrl, 'alice');
  bob = await newTenant(admin, runtime.apiUrl, 'bob');
  shop = await createRunning(alice.api, 'shop');
  await withClient((client) => client.query(`create table items (id serial primary key, body text); insert into items (body) values ('${marker}'), ('second')`));
});

afterAll(async () => {
  await runtime?.stop();
});

describe('data keys', () => {
  it('keeps each database key wrapped by a master key file only its owner can read', async () => {
    const doc = DynamoDBDocumentClient.from(localDynamoClient(runtime.dynamoEndpoint));
    const { Item } = await doc.send(new GetCommand({ TableName: runtime.tableName, Key: { pk: `DB#${shop.id}`, sk: 'KEY#1' } }));
    const masterKeyFile = join(runtime.dataDir, 'master.key');

    expect(statSync(masterKeyFile).mode & 0o777).toBe(0o600);
    expect(Item?.wrapped).toMatch(/^local1:/);
    const wrapper = LocalKeyWrapper.fromFile(masterKeyFile);
    expect(await wrapper.unwrap(Item!.wrapped, shop.id)).toHaveLength(32);
    await expect(wrapper.unwrap(Item!.wrapped, 'db-someone-else')).rejects.toThrow();
    expect(shop.database.dataKeyVersion).toBe(1);
  });
});

describe('a manual backup', () => {
  let backup: any;

  beforeAll(async () => {
    backup = await takeBackup(alice.api, 'shop');
  }, 120_000);

  it('completes with three good copies of the same digest, listed with its expiry', async () => {
    expect(backup).toMatchObject({ kind: 'manual', status: 'completed', keyVersion: 1 });
    expect(backup.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(backup.copies).toHaveLength(3);
    expect(backup.copies.every((c: { ok: boolean; sha256: string }) => c.ok && c.sha256 === backup.sha256)).toBe(true);
    const list = (await alice.api.get('/databases/shop/backups')).body.backups;
    expect(list.map((b: { id: string }) => b.id)).toContain(backup.id);
  });

  it('stores no plaintext: the zones hold no byte of a known row', () => {
    const files = storedFiles(shop.id);

    expect(files.length).toBeGreaterThan(0);
    for (const file of files) expect(readFileSync(file).includes(marker), file).toBe(false);
  });

  it('downloads as a tar archive with the data directory and its backup_label', async () => {
    const link = await alice.api.get(`/databases/shop/backups/${backup.id}/download`);
    expect(link.status).toBe(200);
    const archive = Buffer.from(await (await fetch(link.body.url)).arrayBuffer());
    const listing = execFileSync('tar', ['-t'], { input: archive }).toString();

    expect(listing).toMatch(/^(\.\/)?PG_VERSION$/m);
    expect(listing).toMatch(/^(\.\/)?backup_label$/m);
    const forged = new URL(link.body.url);
    forged.searchParams.set('expires', String(Number(forged.searchParams.get('expires')) + 3600));
    expect((await fetch(forged)).status).toBe(403);
  });

  it('has no pg_dump on PostgreSQL 17 here (no pg_dump that new on this host): format=dump is refused', async () => {
    const answer = await alice.api.get(`/databases/shop/backups/${backup.id}/download?format=dump`);

    expect(backup.logicalDump).toBeUndefined();
    expect([answer.status, answer.body.errors[0].pointer]).toEqual([422, '/query/format']);
  });

  it('restores in place: rows exactly as at the backup, same URL, an undo backup taken first', async () => {
    await withClient((client) => client.query("update items set body = 'changed'; insert into items (body) values ('after backup')"));

    const { operation } = await restore(alice.api, 'shop', { backupId: backup.id, into: 'same' });

    expect(operation.status, operation.error).toBe('succeeded');
    const after = (await alice.api.get('/databases/shop')).body;
    expect(after).toMatchObject({ status: 'running', url: shop.database.url });
    expect(await rows(after, shop.password)).toEqual([marker, 'second']);
    const backups = (await alice.api.get('/databases/shop/backups')).body.backups;
    expect(backups.find((b: { kind: string }) => b.kind === 'pre_restore')).toMatchObject({ status: 'completed', operationId: operation.id });
    expect(backups.find((b: { kind: string }) => b.kind === 'post_restore')).toMatchObject({ status: 'completed' });
  }, 180_000);

  it('restores into a new database with its own password, leaving the source untouched', async () => {
    await withClient((client) => client.query("insert into items (body) values ('only in source')"));

    const { started, operation } = await restore(alice.api, 'shop', { backupId: backup.id, into: 'new', name: 'shop-copy' });

    expect(operation.status, operation.error).toBe('succeeded');
    const copy = (await alice.api.get('/databases/shop-copy')).body;
    expect(copy).toMatchObject({ status: 'running', dataKeyVersion: 1 });
    expect(copy.url).not.toBe(shop.database.url);
    expect(started.password).not.toBe(shop.password);
    expect(await rows(copy, started.password)).toEqual([marker, 'second']);
    await expect(connect(copy.url, shop.password)).rejects.toThrow(/password authentication failed/);
    expect(await rows(shop.database, shop.password)).toEqual([marker, 'second', 'only in source']);
  }, 180_000);
});

describe('a backup of PostgreSQL 15, which this host can pg_dump', () => {
  it('comes with a pg_dump, served by default by the download link and restorable with pg_restore', async () => {
    const created = await alice.api.post('/databases', { name: 'dumped', engine: 'postgresql', version: '15', plan: 'starter-512' });
    expect((await alice.api.waitForOperation(created.body.operation.id)).status).toBe('succeeded');
    const client = await connect((await alice.api.get('/databases/dumped')).body.url, created.body.password);
    await client.query(`create table notes (body text); insert into notes values ('${marker}')`);
    await client.end();

    const backup = await takeBackup(alice.api, 'dumped');
    const link = (await alice.api.get(`/databases/dumped/backups/${backup.id}/download`)).body;
    // As the CLI asks for it: zstd accepted, sent as stored, decompressed by fetch as it arrives.
    const response = await fetch(link.url, { headers: { 'accept-encoding': 'zstd, gzip, deflate' } });
    expect(response.headers.get('content-encoding')).toBe('zstd');
    const dump = Buffer.from(await response.arrayBuffer());
    const sql = execFileSync('/usr/lib/postgresql/15/bin/pg_restore', ['-f', '-'], { input: dump }).toString();

    expect(backup.logicalDump.copies.filter((c: { ok: boolean }) => c.ok)).toHaveLength(3);
    expect(link.format).toBe('pg_dump');
    expect(sql).toContain('CREATE TABLE public.notes');
    expect(sql).toContain(marker);
    for (const file of storedFiles(created.body.database.id)) expect(readFileSync(file).includes(marker), file).toBe(false);
  }, 120_000);
});

describe('point-in-time recovery', () => {
  it('restores to an instant between two commits: the first is there, the second is not', async () => {
    const db = await createRunning(alice.api, 'ledger');
    const client = await connect(db.database.url, db.password);
    await client.query("create table entries (body text); insert into entries values ('before backup')");
    await takeBackup(alice.api, 'ledger');
    await client.query("insert into entries values ('first')");
    await sleep(1100);
    const between = new Date().toISOString();
    await sleep(1100);
    await client.query("insert into entries values ('second')");
    await client.end();

    const { started, operation } = await restore(alice.api, 'ledger', { pointInTime: between, into: 'new', name: 'ledger-pitr' });

    expect(operation.status, operation.error).toBe('succeeded');
    const restored = await connect((await alice.api.get('/databases/ledger-pitr')).body.url, started.password);
    const { rows: entries } = await restored.query<{ body: string }>('select body from entries');
    await restored.end();
    expect(entries.map((e) => e.body).sort()).toEqual(['before backup', 'first']);
  }, 180_000);

  it('follows the timeline a restore in place started, and still reaches instants before that restore', async () => {
    const db = await createRunning(alice.api, 'branches');
    const write = async (body: string) => {
      const client = await connect(db.database.url, db.password);
      await client.query('create table if not exists t (body text)');
      await client.query('insert into t values ($1)', [body]);
      await client.end();
    };
    const instant = async () => {
      await sleep(1100);
      const at = new Date().toISOString();
      await sleep(1100);
      return at;
    };
    await write('base');
    const base = await takeBackup(alice.api, 'branches');
    await write('old branch');
    const beforeRestore = await instant();
    await write('old branch, later');
    await restore(alice.api, 'branches', { backupId: base.id, into: 'same' });
    await write('new branch');
    const afterRestore = await instant();
    await write('new branch, later');

    const contents = async (pointInTime: string, name: string) => {
      const { started, operation } = await restore(alice.api, 'branches', { pointInTime, into: 'new', name });
      expect(operation.status, operation.error).toBe('succeeded');
      const client = await connect((await alice.api.get(`/databases/${name}`)).body.url, started.password);
      const { rows: found } = await client.query<{ body: string }>('select body from t order by body');
      await client.end();
      return found.map((r) => r.body);
    };
    expect(await contents(afterRestore, 'branches-new')).toEqual(['base', 'new branch']);
    expect(await contents(beforeRestore, 'branches-old')).toEqual(['base', 'old branch']);
  }, 240_000);

  it('refuses an instant outside the recovery window (422), naming the window', async () => {
    await createRunning(alice.api, 'windowed');
    await takeBackup(alice.api, 'windowed');
    const answer = await alice.api.post('/databases/windowed/restore', { pointInTime: '2020-01-01T00:00:00Z', into: 'same' });

    expect(answer.status).toBe(422);
    expect(answer.body.errors[0].pointer).toBe('/body/pointInTime');
    const window = (await alice.api.get('/databases/windowed/backups/recovery-window')).body;
    expect(window.earliest).toBeDefined();
    expect(answer.body.detail).toContain(window.earliest);
  }, 120_000);
});

describe('failures', () => {
  it('rolls back a restore that fails on the host: the database keeps its current data and timeline', async () => {
    const backup = await takeBackup(alice.api, 'shop');
    const before = await rows(shop.database, shop.password);
    const histories = () => storedFiles(shop.id).filter((file) => file.includes('.history')).sort();
    const historiesBefore = histories();
    expect(await agentCall('PUT', '/v1/faults', { operation: 'restore', instanceId: shop.id, message: 'disk unplugged' })).toBe(204);

    const { operation } = await restore(alice.api, 'shop', { backupId: backup.id, into: 'same' });

    expect(operation.status).toBe('rolled_back');
    expect(operation.error).toContain('disk unplugged');
    expect((await alice.api.get('/databases/shop')).body).toMatchObject({ status: 'running' });
    expect(await rows(shop.database, shop.password)).toEqual(before);
    // The recovered scratch server had started a timeline; it never went live, so the archive does not hold it.
    expect(histories()).toEqual(historiesBefore);
  }, 180_000);

  it('ends a failed backup failed, with the database running and the next backup fine', async () => {
    expect(await agentCall('PUT', '/v1/faults', { operation: 'backup', instanceId: shop.id, message: 'zone unreachable' })).toBe(204);
    const started = await alice.api.post('/databases/shop/backups');
    const operation = await alice.api.waitForOperation(started.body.operation.id);

    expect(operation.status).toBe('failed');
    expect((await alice.api.get(`/databases/shop/backups/${started.body.backup.id}`)).body).toMatchObject({ status: 'failed' });
    expect((await alice.api.get('/databases/shop')).body.status).toBe('running');
    expect((await takeBackup(alice.api, 'shop')).status).toBe('completed');
  }, 180_000);

  it('ends a backup failed when the agent dies during it, lists no copy as good, and backs up again after', async () => {
    const db = await createRunning(alice.api, 'crashed');
    const client = await connect(db.database.url, db.password);
    // ~150 MB of incompressible rows, so that the backup is still running when the agent dies.
    await client.query(`create table big as select g, x.body from generate_series(1, 150000) g,
      lateral (select string_agg(md5(random()::text || s::text || g::text), '') as body from generate_series(1, 32) s) x`);
    await client.end();
    const started = await alice.api.post('/databases/crashed/backups');
    const backupId = started.body.backup.id as string;
    const onHost = async () => {
      const response = await fetch(`${runtime.agentUrl}/v1/archives/${db.id}/backups/${backupId}`, { headers: { authorization: `Bearer ${runtime.agentSecret}` } });
      return response.status === 200 ? ((await response.json()) as { status: string }).status : undefined;
    };
    for (const deadline = Date.now() + 30_000; (await onHost()) !== 'running';) {
      if (Date.now() > deadline) throw new Error('the backup never ran on the host');
      await sleep(20);
    }

    await runtime.crashAgent();

    const operation = await alice.api.waitForOperation(started.body.operation.id, 120_000);
    expect(operation.status).toBe('failed');
    expect((await alice.api.get(`/databases/crashed/backups/${backupId}`)).body).toMatchObject({ status: 'failed', copies: [] });
    expect(storedFiles(db.id).filter((file) => file.endsWith(`${backupId}.tar.zst.enc`))).toEqual([]);
    expect((await alice.api.get('/databases/crashed')).body.status).toBe('running');
    expect((await takeBackup(alice.api, 'crashed')).status).toBe('completed');
  }, 240_000);

  it('detects tampered copies: restores from a good copy, and refuses when none is left', async () => {
    const db = await createRunning(alice.api, 'fragile');
    const client = await connect(db.database.url, db.password);
    await client.query("create table items (id serial primary key, body text); insert into items (body) values ('kept')");
    await client.end();
    const backup = await takeBackup(alice.api, 'fragile');
    const copies = storedFiles(db.id).filter((file) => file.includes(backup.id) && file.endsWith('.enc'));
    expect(copies.length).toBeGreaterThanOrEqual(3);
    const flipByte = (file: string) => {
      const bytes = readFileSync(file);
      bytes[Math.floor(bytes.length / 2)] ^= 0xff;
      writeFileSync(file, bytes);
    };

    flipByte(copies[0]);
    const fromGoodCopy = await restore(alice.api, 'fragile', { backupId: backup.id, into: 'same' });
    expect(fromGoodCopy.operation.status, fromGoodCopy.operation.error).toBe('succeeded');

    copies.slice(1).forEach(flipByte);
    const noGoodCopy = await restore(alice.api, 'fragile', { backupId: backup.id, into: 'same' });
    expect(noGoodCopy.operation.status).toBe('rolled_back');
    expect(noGoodCopy.operation.error).toContain(backup.id);
    expect(await rows((await alice.api.get('/databases/fragile')).body, db.password)).toEqual(['kept']);
  }, 240_000);
});

describe('tenancy and bad input', () => {
  it("answers 404 to another account on every backup route, and for an unknown backup", async () => {
    const backupId = (await alice.api.get('/databases/shop/backups')).body.backups[0].id;
    const answers = await Promise.all([
      bob.api.get(`/databases/${shop.id}/backups`),
      bob.api.post(`/databases/${shop.id}/backups`),
      bob.api.get(`/databases/${shop.id}/backups/${backupId}`),
      bob.api.get(`/databases/${shop.id}/backups/${backupId}/download`),
      bob.api.get(`/databases/${shop.id}/backups/recovery-window`),
      bob.api.call('PUT', `/databases/${shop.id}/backup-schedule`, { hour: 3 }),
      bob.api.post(`/databases/${shop.id}/restore`, { backupId, into: 'same' }),
      alice.api.get('/databases/shop/backups/bk-00000000000000000000000000'),
      alice.api.post('/databases/shop/restore', { backupId: 'bk-00000000000000000000000000', into: 'same' }),
    ]);
    expect(answers.map((a) => a.status)).toEqual([404, 404, 404, 404, 404, 404, 404, 404, 404]);
  });

  it('names each bad field', async () => {
    const badHour = await alice.api.call('PUT', '/databases/shop/backup-schedule', { hour: 24 });
    const tooLong = await alice.api.call('PUT', '/databases/shop/backup-schedule', { hour: 2, retention: { pointInTimeDays: 90 } });
    const both = await alice.api.post('/databases/shop/restore', { backupId: 'bk-x', pointInTime: new Date().toISOString() });
    const noName = await alice.api.post('/databases/shop/restore', { pointInTime: new Date().toISOString(), into: 'new' });

    expect([badHour.status, badHour.body.errors[0].pointer]).toEqual([400, '/body/hour']);
    expect([tooLong.status, tooLong.body.errors[0].pointer]).toEqual([422, '/body/retention/pointInTimeDays']);
    expect(both.status).toBe(422);
    expect([noName.status, noName.body.errors[0].pointer]).toEqual([422, '/body/name']);
  });
});

describe('schedules', () => {
  it('backs up the databases of this hour once a day, found through the index', async () => {
    const db = await createRunning(alice.api, 'nightly');
    expect((await alice.api.call('PUT', '/databases/nightly/backup-schedule', { hour: 3 })).body.backupHour).toBe(3);
    const before = (await alice.api.get('/databases/nightly/backups')).body.backups.length;

    const tomorrow3am = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate() + 1, 3, 5));
    await runtime.fireSchedule('BackupScheduler', tomorrow3am);
    await runtime.fireSchedule('BackupScheduler', new Date(tomorrow3am.getTime() + 15 * 60_000));

    const backups = (await alice.api.get('/databases/nightly/backups')).body.backups;
    expect(backups.length - before).toBe(1);
    expect(backups[0]).toMatchObject({ kind: 'scheduled', databaseId: db.id });
    expect((await alice.api.waitForOperation(backups[0].operationId)).status).toBe('succeeded');
  }, 120_000);

  it('prunes what fell out of retention from every copy, never the newest backup', async () => {
    const db = await createRunning(alice.api, 'pruned');
    await alice.api.call('PUT', '/databases/pruned/backup-schedule', { hour: 4 });
    const scheduledOn = async (daysAhead: number) => {
      const at = new Date(Date.now() + daysAhead * 86_400_000);
      at.setUTCHours(4, 5);
      await runtime.fireSchedule('BackupScheduler', at);
      const [newest] = (await alice.api.get('/databases/pruned/backups')).body.backups;
      expect((await alice.api.waitForOperation(newest.operationId)).status).toBe('succeeded');
      return newest;
    };
    const old = await scheduledOn(1);
    const newest = await scheduledOn(2);

    const walSegments = async () => {
      const response = await fetch(`${runtime.agentUrl}/v1/archives/${db.id}`, { headers: { authorization: `Bearer ${runtime.agentSecret}` } });
      return ((await response.json()) as { walSegments: number }).walSegments;
    };
    const segmentsBefore = await walSegments();

    const inFiveWeeks = new Date(Date.now() + 35 * 86_400_000);
    inFiveWeeks.setUTCHours(4, 30);
    await runtime.fireSchedule('BackupPruner', inFiveWeeks);

    expect(await walSegments()).toBeLessThan(segmentsBefore);

    const left = (await alice.api.get('/databases/pruned/backups')).body.backups.map((b: { id: string }) => b.id);
    expect(left).toEqual([newest.id]);
    expect(storedFiles(db.id).some((file) => file.includes(old.id))).toBe(false);
    expect(storedFiles(db.id).some((file) => file.includes(newest.id))).toBe(true);
  }, 120_000);
});

describe('restore drills', () => {
  /** The next instant at the database's backup hour on its drill day, when the drill schedule picks it. */
  function drillTime(database: { id: string; backupHour: number }): Date {
    const at = new Date();
    at.setUTCHours(database.backupHour, 10, 0, 0);
    while (at.getUTCDay() !== drillWeekday(database.id)) at.setUTCDate(at.getUTCDate() + 1);
    return at;
  }

  async function drillOf(databaseId: string) {
    const operations = (await alice.api.get(`/databases/${databaseId}/operations`)).body.operations;
    const drill = operations.find((o: { kind: string }) => o.kind === 'drill');
    expect(drill).toBeDefined();
    return alice.api.waitForOperation(drill.id, 120_000);
  }

  it('restores the newest backup into a scratch server, reads every table, records the time it took', async () => {
    const db = await createRunning(alice.api, 'drilled');
    const client = await connect(db.database.url, db.password);
    await client.query('create table a (n int); insert into a select generate_series(1, 500); create table b (n int); insert into b values (1)');
    await client.end();
    const backup = await takeBackup(alice.api, 'drilled');

    await runtime.fireSchedule('RestoreDrill', drillTime(db.database));
    const drill = await drillOf(db.id);

    expect(drill.status, drill.error).toBe('succeeded');
    expect(drill.result).toMatchObject({ backupId: backup.id, tables: 2, totalRows: 501 });
    expect(drill.result.recoverySeconds).toBeGreaterThan(0);
    expect(await agentCall('GET', `/v1/instances/${drill.input.scratchInstanceId}`)).toBe(404);
    expect((await alice.api.get('/databases/drilled')).body).toMatchObject({ status: 'running' });
  }, 120_000);

  it('sends an event when a drill fails, and leaves no scratch server behind', async () => {
    const db = await createRunning(alice.api, 'undrillable');
    const backup = await takeBackup(alice.api, 'undrillable');
    for (const file of storedFiles(db.id).filter((f) => f.includes(backup.id) && f.endsWith('.enc'))) writeFileSync(file, 'not a backup');

    await runtime.fireSchedule('RestoreDrill', drillTime(db.database));
    const drill = await drillOf(db.id);
    await runtime.drainEvents();

    expect(drill.status).toBe('failed');
    expect(drill.error).toContain(backup.id);
    const events = (await alice.api.get('/databases/undrillable/events')).body.events;
    expect(events.find((e: { type: string }) => e.type === 'dbplane.restore-drill.failed')).toMatchObject({ operationId: drill.id });
    expect(await agentCall('GET', `/v1/instances/${drill.input.scratchInstanceId}`)).toBe(404);
  }, 120_000);
});

describe('deletion', () => {
  it('purges on request: every copy and the data key are gone (crypto-shredding)', async () => {
    const db = await createRunning(alice.api, 'shredded');
    await takeBackup(alice.api, 'shredded');
    expect(storedFiles(db.id).length).toBeGreaterThan(0);

    const deleted = await alice.api.delete('/databases/shredded?purge=true');
    expect(deleted.status).toBe(202);
    expect((await alice.api.waitForOperation(deleted.body.operation.id)).status).toBe('succeeded');

    expect(storedFiles(db.id)).toEqual([]);
    const doc = DynamoDBDocumentClient.from(localDynamoClient(runtime.dynamoEndpoint));
    const { Item } = await doc.send(new GetCommand({ TableName: runtime.tableName, Key: { pk: `DB#${db.id}`, sk: 'KEY#1' } }));
    expect(Item).toBeUndefined();
  }, 120_000);

  it('keeps the backups of a database deleted without purge', async () => {
    const db = await createRunning(alice.api, 'retained');
    await takeBackup(alice.api, 'retained');

    const deleted = await alice.api.delete('/databases/retained');
    expect((await alice.api.waitForOperation(deleted.body.operation.id)).status).toBe('succeeded');

    expect(storedFiles(db.id).length).toBeGreaterThan(0);
  }, 120_000);
});
