import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlueGreen, HostInfo, Instance, type EnsureInstance } from '#core/agent-api.ts';
import {
  cleanupSource, copySchema, createTarget, drain, endSourceSessions, fenceSource, finishTarget, prepareSource, replicationProgress, subscribe,
  syncSequences, upgradeName, type AdminEndpoint,
} from '../agent/blue-green.ts';
import { findPostgresInstalls } from '../agent/host.ts';
import { adminRole, resolveRunAs, type RunAs, type ServerPaths } from '../agent/postgres.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';
import { agentCaller, appInstanceSpec, appQuery, eventually } from './helpers/agent.ts';
import { probeWrites } from './helpers/probe.ts';

const secret = 'test-secret';
const password = 'blue green password';
let dataDir: string;
let agent: AgentProcess;
/** Target servers this test started; stopped by pid at the end. */
const targets: ChildProcess[] = [];
const call = agentCaller(() => agent, secret);

async function stopServer(server: ChildProcess): Promise<void> {
  if (server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise((resolve) => server.once('exit', resolve));
  server.kill('SIGINT');
  await exited;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer().once('error', reject).listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

async function runningInstance(id: string, spec: EnsureInstance): Promise<AdminEndpoint> {
  expect((await call('PUT', `/v1/instances/${id}`, spec)).status).toBe(200);
  const instance = await eventually(async () => {
    const parsed = Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
    return parsed.status === 'running' ? parsed : undefined;
  }, 60_000);
  return { port: instance.port, paths: { socket: join(dataDir, 'sockets', String(instance.port)) } };
}

async function adminRows(server: AdminEndpoint, sql: string): Promise<unknown[]> {
  const client = new pg.Client({ host: server.paths.socket, port: server.port, user: adminRole, database: 'app' });
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Inserts, updates and deletes on the source as the customer, until its session is ended (as the cutover does). */
async function writeUntilEnded(port: number): Promise<number> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'app', password, database: 'app' });
  client.on('error', () => undefined);
  await client.connect();
  let writes = 0;
  try {
    for (;;) {
      await client.query("INSERT INTO items (note) VALUES ('during')");
      await client.query('INSERT INTO events (payload) VALUES ($1)', [writes]);
      if (writes % 10 === 0) await client.query("UPDATE items SET note = 'updated' WHERE id = (SELECT min(id) FROM items WHERE note <> 'updated')");
      if (writes % 25 === 0) await client.query('DELETE FROM events WHERE id = (SELECT min(id) FROM events)');
      writes++;
    }
  } catch {
    return writes;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Every 50 ms a new session through the gateway writes probe row n and an item with `note`. */
function probeGateway(gatewayPort: number, note: string) {
  return probeWrites(async (n) => {
    const client = new pg.Client({ host: '127.0.0.1', port: gatewayPort, user: 'app', password, database: 'app' });
    // A session ended after its write committed (a cutover or rollback ends those left on the server clients leave) is no failed write.
    client.on('error', () => undefined);
    await client.connect();
    try {
      // One simple query, one transaction: both rows or neither.
      await client.query(`INSERT INTO probe VALUES (${n}); INSERT INTO items (note) VALUES (${client.escapeLiteral(note)})`);
    } finally {
      await client.end().catch(() => undefined);
    }
  }, { everyMs: 50 });
}

describe('blue/green building blocks', () => {
  let host: HostInfo;
  let runAs: RunAs | undefined;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'dbplane-bg-'));
    agent = await spawnAgent({ dataDir, secret, faults: true });
    host = HostInfo.parse((await call('GET', '/v1/host')).body);
    runAs = await resolveRunAs();
  });

  afterAll(async () => {
    await Promise.all(targets.map(stopServer));
    await agent?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it.each([15, 14])('moves a %i server with rows written during the sync to 17, and cuts over with sequences in step', async (major) => {
    const version = (m: number) => host.versions.find((v) => v.version.startsWith(`${m}.`))!.version;
    const spec = appInstanceSpec(host, password, { version: version(major) });
    const id = `bg-source-${major}`;
    const source = await runningInstance(id, spec);
    await appQuery(source.port, password, `
      CREATE TABLE items (id serial PRIMARY KEY, note text NOT NULL);
      CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload int NOT NULL, at timestamptz DEFAULT now());
      INSERT INTO items (note) SELECT 'before ' || i FROM generate_series(1, 50000) i;
      INSERT INTO events (payload) SELECT i FROM generate_series(1, 20000) i;`);

    const prepared = await prepareSource(source);
    expect(prepared).toEqual({ databases: ['app'], restartNeeded: true });
    // The caller restarts: here through the agent, with a changed setting.
    await runningInstance(id, { ...spec, settings: { ...spec.settings, work_mem: '8MB' } });
    await eventually(async () => ((await prepareSource(source)).restartNeeded ? undefined : true));

    const targetPort = await freePort();
    const paths: ServerPaths = { data: join(dataDir, `green-${major}`, 'data'), log: join(dataDir, `green-${major}`, 'log'), socket: join(dataDir, 'sockets', String(targetPort)) };
    const target = { port: targetPort, paths };
    const install = findPostgresInstalls(join(import.meta.dirname, '..', 'node_modules')).find((i) => i.version === version(17))!;
    const targetServer = await createTarget({ install, paths, port: targetPort, settings: spec.settings, runAs });
    targets.push(targetServer);

    const writer = writeUntilEnded(source.port);
    await copySchema(source, target, runAs);
    // Retried: idempotent.
    await copySchema(source, target, runAs);
    await subscribe(source, target);
    await subscribe(source, target);
    const copied = await eventually(async () => {
      const progress = await replicationProgress(source, target);
      return progress.every((p) => p.initialCopyDone) ? progress : undefined;
    }, 60_000);
    expect(copied).toEqual([expect.objectContaining({ database: 'app', subscribed: true, tables: 2, tablesReady: 2, errors: 0 })]);
    // Writes keep streaming after the initial copy.
    await new Promise((resolve) => setTimeout(resolve, 1000));

    const started = performance.now();
    const ended = await endSourceSessions(source);
    const endedMs = performance.now() - started;
    const drained = await drain(source, target);
    const sequences = await syncSequences(source, target);
    const cutoverMs = performance.now() - started;
    const writes = await writer;
    console.log(`blue/green cutover ${major} → 17 (end sessions + drain + sequences): ${cutoverMs.toFixed(0)} ms — ${ended} session ended in ${endedMs.toFixed(0)} ms, `
      + `drained to ${drained.lsn} in ${drained.waitedMs} ms, ${sequences} sequences in ${(cutoverMs - endedMs - drained.waitedMs).toFixed(0)} ms; `
      + `${writes} writer iterations during the sync`);

    expect(ended).toBe(1);
    expect(writes).toBeGreaterThan(50);
    expect(sequences).toBe(2);
    for (const sql of ['SELECT id, note FROM items ORDER BY id', 'SELECT id, payload, at FROM events ORDER BY id']) {
      const [onSource, onTarget] = [await adminRows(source, sql), await adminRows(target, sql)];
      expect(onTarget.length).toBe(onSource.length);
      expect(onTarget).toEqual(onSource);
    }
    // A session ended between its two inserts leaves one more item than full iterations.
    const [during] = await adminRows(target, "SELECT count(*)::int AS n FROM items WHERE note = 'during'") as { n: number }[];
    expect(during!.n - writes).toBeOneOf([0, 1]);

    await finishTarget(target);
    await cleanupSource(source);
    await finishTarget(target);
    await cleanupSource(source);
    expect(await adminRows(source, 'SELECT slot_name FROM pg_replication_slots')).toEqual([]);
    expect(await adminRows(source, `SELECT pubname FROM pg_publication WHERE pubname = '${upgradeName}'`)).toEqual([]);
    expect(await adminRows(target, 'SELECT subname FROM pg_subscription')).toEqual([]);

    // The customer's role, password and ownership came along; new rows take the next sequence values.
    const [item] = await appQuery<{ id: number }>(targetPort, password, "INSERT INTO items (note) VALUES ('after') RETURNING id");
    const [event] = await appQuery<{ id: string }>(targetPort, password, 'INSERT INTO events (payload) VALUES (-1) RETURNING id');
    // Not max(id) + 1: an insert ended with its session has used a value too.
    const [onSource] = await adminRows(source, `SELECT (SELECT max(id) FROM items) AS "maxItem", (SELECT last_value FROM items_id_seq)::int AS "itemSeq",
      (SELECT max(id) FROM events)::int AS "maxEvent", (SELECT last_value FROM events_id_seq)::int AS "eventSeq"`) as Record<string, number>[];
    expect(item!.id).toBeGreaterThan(onSource!.maxItem!);
    expect(item!.id).toBe(onSource!.itemSeq! + 1);
    expect(Number(event!.id)).toBeGreaterThan(onSource!.maxEvent!);
    expect(Number(event!.id)).toBe(onSource!.eventSeq! + 1);
    expect(await appQuery(targetPort, password, 'SELECT current_setting(\'server_version_num\')::int / 10000 AS major')).toEqual([{ major: 17 }]);

    await stopServer(targetServer);
    expect((await call('DELETE', `/v1/instances/${id}`)).status).toBeLessThan(300);
  }, 180_000);

  it('refuses to copy the schema of a source newer than any pg_dump on the host', async () => {
    const spec = appInstanceSpec(host, password, { version: host.versions.find((v) => v.version.startsWith('16.'))!.version });
    const newer = await runningInstance('bg-newer', spec);

    await expect(copySchema(newer, newer, runAs)).rejects.toMatchObject({ name: 'Unprocessable', message: expect.stringContaining('no pg_dump as new as PostgreSQL 16') });
  });

  it('fences the source at the cutover: a write that got in waits (reads go on) until the fence is released', async () => {
    const source = await runningInstance('bg-fence', appInstanceSpec(host, password, { version: host.versions.find((v) => v.version.startsWith('15.'))!.version }));
    await appQuery(source.port, password, 'CREATE TABLE items (id int PRIMARY KEY)');
    const late = new pg.Client({ host: '127.0.0.1', port: source.port, user: 'app', password, database: 'app' });
    await late.connect();

    const release = await fenceSource(source);
    const write = late.query('INSERT INTO items VALUES (1)').then(() => performance.now());
    await new Promise((resolve) => setTimeout(resolve, 300));
    const read = await adminRows(source, 'SELECT count(*)::int AS n FROM items');
    const releasedAt = performance.now();
    await release();

    expect(read).toEqual([{ n: 0 }]);
    expect(await write).toBeGreaterThanOrEqual(releasedAt);
    await late.end();
    expect(await appQuery(source.port, password, 'SELECT id FROM items')).toEqual([{ id: 1 }]);
    expect((await call('DELETE', '/v1/instances/bg-fence')).status).toBe(204);
  });

  describe('through the agent API', () => {
    const version = (m: number) => host.versions.find((v) => v.version.startsWith(`${m}.`))!.version;
    const exists = (path: string) => access(path).then(() => true, () => false);
    const serverVersion = async (port: number) => (await appQuery<{ v: string }>(port, password, "SELECT current_setting('server_version') AS v"))[0]!.v;
    /** A running 15 instance with `rows` items and an empty probe table. */
    const withItems = async (id: string, rows: number) => {
      const source = await runningInstance(id, appInstanceSpec(host, password, { version: version(15) }));
      const { gatewayPort } = Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
      await appQuery(gatewayPort, password, `
        CREATE TABLE items (id serial PRIMARY KEY, note text NOT NULL);
        INSERT INTO items (note) SELECT 'before ' || i FROM generate_series(1, ${rows}) i;
        CREATE TABLE probe (id int PRIMARY KEY);`);
      return { source, gatewayPort };
    };

    it('moves a 15 instance to 17 behind the same gateway: rows written during it kept, none failed; the old folder kept until its rollback period ends; an agent restart finds 17', async () => {
      const id = 'bg-api';
      const { source, gatewayPort } = await withItems(id, 20_000);
      const probe = probeGateway(gatewayPort, 'during');

      const started = await call('POST', `/v1/instances/${id}/blue-green`, { id: 'op-one', version: version(17) });
      expect(started.status, JSON.stringify(started.body)).toBe(200);
      expect(BlueGreen.parse(started.body)).toMatchObject({ id: 'op-one', fromVersion: version(15), version: version(17) });
      expect((await call('POST', `/v1/instances/${id}/blue-green`, { id: 'op-one', version: version(17) })).status).toBe(200);
      expect((await call('POST', `/v1/instances/${id}/blue-green`, { id: 'op-two', version: version(17) })).status).toBe(409);
      // A long poll: each GET answers once the new server is ready, or 5 s later still building.
      const answers: { status: string; ms: number }[] = [];
      const ready = await eventually(async () => {
        const asked = Date.now();
        const progress = BlueGreen.parse((await call('GET', `/v1/instances/${id}/blue-green/op-one?waitSeconds=5`)).body);
        answers.push({ status: progress.status, ms: Date.now() - asked });
        return progress.status === 'ready' ? progress : undefined;
      }, 60_000);
      expect(answers.filter((a) => a.status === 'building').every((a) => a.ms >= 5_000), JSON.stringify(answers)).toBe(true);
      expect(ready.databases).toEqual([expect.objectContaining({ database: 'app', initialCopyDone: true, tables: 2, errors: 0 })]);

      // A difference in row counts (injected) sends clients back to the old server, which kept running.
      expect((await call('PUT', '/v1/faults', { operation: 'cutover', instanceId: id, message: 'counted differently' })).status).toBe(204);
      const refused = await call('POST', `/v1/instances/${id}/blue-green/op-one/cutover`);
      expect(refused.status).toBe(409);
      expect(refused.body.detail).toContain('counted differently');
      expect(await serverVersion(gatewayPort)).toBe(version(15));
      await eventually(async () => (BlueGreen.parse((await call('GET', `/v1/instances/${id}/blue-green/op-one`)).body).status === 'ready' ? true : undefined), 30_000);

      const cut = await call('POST', `/v1/instances/${id}/blue-green/op-one/cutover`);
      expect(cut.status, JSON.stringify(cut.body)).toBe(200);
      const seen = await probe.stop();
      const done = BlueGreen.parse(cut.body);
      expect(done.status).toBe('cut_over');
      console.log(`blue/green through the agent: held ${done.cutover!.heldMs} ms; probe: ${seen.acknowledged.length} writes, longest stall ${seen.longestStallMs} ms`);
      expect(seen.failures).toEqual([]);
      expect(await serverVersion(gatewayPort)).toBe(version(17));
      const instance = Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
      expect(instance).toMatchObject({ version: version(17), gatewayPort, status: 'running', port: done.port });
      const probed = (await appQuery<{ id: number }>(gatewayPort, password, 'SELECT id FROM probe ORDER BY id')).map((r) => r.id);
      expect(probed).toEqual(seen.acknowledged);
      // The counts compared while clients were held: then equal on both.
      const counted = Object.fromEntries(done.cutover!.tables.tables.map((t) => [t.name, t.rows]));
      expect(counted.probe).toBeGreaterThan(0);
      expect(counted.items).toBe(20_000 + counted.probe!);
      const [{ next }] = await appQuery<{ next: number }>(gatewayPort, password, "INSERT INTO items (note) VALUES ('after') RETURNING id AS next");
      expect(next).toBe(20_000 + seen.acknowledged.length + 1);
      // A retry answers the saved result; the upgrade cannot be abandoned any more.
      expect(BlueGreen.parse((await call('POST', `/v1/instances/${id}/blue-green/op-one/cutover`)).body).cutover).toEqual(done.cutover);
      expect((await call('DELETE', `/v1/instances/${id}/blue-green/op-one`)).status).toBe(409);
      // Until the upgrade is finished the old server follows the new one.
      await eventually(async () => ((await adminRows(source, "SELECT 1 FROM items WHERE note = 'after'")).length === 1 ? true : undefined), 30_000);
      // Finished (twice: idempotent), it is stopped, its folder kept; there is nothing to roll back to any more.
      for (let i = 0; i < 2; i++) expect((await call('POST', `/v1/instances/${id}/blue-green/op-one/finish`)).status).toBe(200);
      expect((await call('POST', `/v1/instances/${id}/blue-green/op-one/rollback`)).status).toBe(409);
      await expect(appQuery(source.port, password, 'SELECT 1')).rejects.toThrow();
      const target = { port: done.port, paths: { socket: join(dataDir, 'sockets', String(done.port)) } };
      expect(await adminRows(target, `SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE '${upgradeName}%'`)).toEqual([]);
      expect(await adminRows(target, `SELECT pubname FROM pg_publication WHERE pubname = '${upgradeName}'`)).toEqual([]);
      expect(await exists(join(dataDir, 'instances', id, 'data', 'PG_VERSION'))).toBe(true);

      await agent.stop();
      // The rollback period (7 days) made to end 20 s from now: the agent's sweep removes the old folder then.
      const stateFile = join(dataDir, 'instances', id, 'state.json');
      const state = JSON.parse(await readFile(stateFile, 'utf8'));
      expect(state.retired).toHaveLength(1);
      state.retired[0].removeAfter = new Date(Date.now() + 20_000).toISOString();
      await writeFile(stateFile, JSON.stringify(state));
      agent = await spawnAgent({ dataDir, secret, faults: true, retiredSweepMs: 500 });
      await eventually(async () => (Instance.parse((await call('GET', `/v1/instances/${id}`)).body).status === 'running' ? true : undefined), 60_000);
      expect(await serverVersion(gatewayPort)).toBe(version(17));
      expect((await appQuery<{ n: number }>(gatewayPort, password, 'SELECT count(*)::int AS n FROM probe'))[0]!.n).toBe(seen.acknowledged.length);
      await expect(appQuery(source.port, password, 'SELECT 1')).rejects.toThrow();
      expect(await exists(join(dataDir, 'instances', id, 'data', 'PG_VERSION')), 'removed before its time').toBe(true);
      await eventually(async () => (await exists(join(dataDir, 'instances', id, 'data')) ? undefined : true), 60_000);
      expect(await serverVersion(gatewayPort)).toBe(version(17));
      expect((await call('DELETE', `/v1/instances/${id}`)).status).toBe(204);
    }, 240_000);

    it('rolls a cut-over upgrade back: every write made on the new server since is on the old one, none failed; the new server goes', async () => {
      const id = 'bg-rollback';
      const { source, gatewayPort } = await withItems(id, 5000);
      expect((await call('POST', `/v1/instances/${id}/blue-green`, { id: 'op-back', version: version(17) })).status).toBe(200);
      await eventually(async () => (BlueGreen.parse((await call('GET', `/v1/instances/${id}/blue-green/op-back`)).body).status === 'ready' ? true : undefined), 60_000);
      const rolledBackBefore = await call('POST', `/v1/instances/${id}/blue-green/op-back/rollback`);
      expect(rolledBackBefore.status).toBe(409);
      expect((await call('POST', `/v1/instances/${id}/blue-green/op-back/cutover`)).status).toBe(200);
      expect(await serverVersion(gatewayPort)).toBe(version(17));

      const probe = probeGateway(gatewayPort, 'on 17');
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const back = await call('POST', `/v1/instances/${id}/blue-green/op-back/rollback`);
      expect(back.status, JSON.stringify(back.body)).toBe(200);
      const seen = await probe.stop();
      expect(BlueGreen.parse(back.body).status).toBe('rolled_back');
      // A retry answers the same; the upgrade cannot be finished any more.
      expect(BlueGreen.parse((await call('POST', `/v1/instances/${id}/blue-green/op-back/rollback`)).body).status).toBe('rolled_back');
      expect((await call('POST', `/v1/instances/${id}/blue-green/op-back/finish`)).status).toBe(409);
      console.log(`blue/green rollback through the agent: probe ${seen.acknowledged.length} writes, longest stall ${seen.longestStallMs} ms`);

      expect(seen.failures).toEqual([]);
      expect(seen.acknowledged.length).toBeGreaterThan(5);
      expect(await serverVersion(gatewayPort)).toBe(version(15));
      expect(Instance.parse((await call('GET', `/v1/instances/${id}`)).body)).toMatchObject({ version: version(15), port: source.port, status: 'running' });
      const probed = (await appQuery<{ id: number }>(gatewayPort, password, 'SELECT id FROM probe ORDER BY id')).map((r) => r.id);
      expect(probed).toEqual(seen.acknowledged);
      // The sequence came back too: the next row follows those written on 17.
      const [{ next }] = await appQuery<{ next: number }>(gatewayPort, password, "INSERT INTO items (note) VALUES ('back on 15') RETURNING id AS next");
      expect(next).toBe(5000 + seen.acknowledged.length + 1);
      expect(await exists(join(dataDir, 'instances', id, 'green-op-back'))).toBe(false);
      expect(await adminRows(source, 'SELECT slot_name FROM pg_replication_slots')).toEqual([]);
      expect(await adminRows(source, 'SELECT subname FROM pg_subscription')).toEqual([]);

      await agent.stop();
      agent = await spawnAgent({ dataDir, secret, faults: true });
      await eventually(async () => (Instance.parse((await call('GET', `/v1/instances/${id}`)).body).status === 'running' ? true : undefined), 60_000);
      expect(await serverVersion(gatewayPort)).toBe(version(15));
      expect((await appQuery<{ n: number }>(gatewayPort, password, "SELECT count(*)::int AS n FROM items WHERE note <> 'back on 15'"))[0]!.n).toBe(5000 + seen.acknowledged.length);
      expect((await call('DELETE', `/v1/instances/${id}`)).status).toBe(204);
    }, 240_000);

    it('refuses the cutover after DDL on the old server (logical replication does not carry it): clients stay there', async () => {
      const id = 'bg-ddl';
      const source = await runningInstance(id, appInstanceSpec(host, password, { version: version(15) }));
      const { gatewayPort } = Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
      await appQuery(source.port, password, 'CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 100)');
      expect((await call('POST', `/v1/instances/${id}/blue-green`, { id: 'op-ddl', version: version(17) })).status).toBe(200);
      await eventually(async () => (BlueGreen.parse((await call('GET', `/v1/instances/${id}/blue-green/op-ddl`)).body).status === 'ready' ? true : undefined), 60_000);

      await appQuery(gatewayPort, password, 'CREATE TABLE added (id int PRIMARY KEY); INSERT INTO added VALUES (1)');
      const progress = await eventually(async () => {
        const seen = BlueGreen.parse((await call('GET', `/v1/instances/${id}/blue-green/op-ddl`)).body);
        return seen.status === 'failed' ? seen : undefined;
      }, 60_000);
      const refused = await call('POST', `/v1/instances/${id}/blue-green/op-ddl/cutover`);

      expect(progress.reason).toContain('replication keeps failing in app');
      expect(refused.status).toBe(409);
      expect(await serverVersion(gatewayPort)).toBe(version(15));
      expect(await appQuery(gatewayPort, password, 'SELECT id FROM added')).toEqual([{ id: 1 }]);
      expect((await call('DELETE', `/v1/instances/${id}/blue-green/op-ddl`)).status).toBe(204);
      expect((await call('DELETE', `/v1/instances/${id}`)).status).toBe(204);
    }, 120_000);

    it('goes on after an agent restart before the cutover, then abandons: the new server and its folder go, the old one serves on with no slot or publication left', async () => {
      const id = 'bg-abandon';
      const source = await runningInstance(id, appInstanceSpec(host, password, { version: version(15) }));
      await appQuery(source.port, password, 'CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 100)');
      expect((await call('POST', `/v1/instances/${id}/blue-green`, { id: 'op-gone', version: version(17) })).status).toBe(200);
      const green = join(dataDir, 'instances', id, 'green-op-gone');
      expect(await exists(join(green, 'data', 'PG_VERSION'))).toBe(true);

      await agent.stop();
      agent = await spawnAgent({ dataDir, secret, faults: true });
      await eventually(async () => (Instance.parse((await call('GET', `/v1/instances/${id}`)).body).status === 'running' ? true : undefined), 60_000);
      await appQuery(source.port, password, 'INSERT INTO items SELECT generate_series(101, 200)');
      const resumed = await eventually(async () => {
        const progress = BlueGreen.parse((await call('GET', `/v1/instances/${id}/blue-green/op-gone`)).body);
        return progress.status === 'ready' ? progress : undefined;
      }, 60_000);
      // Its subscription lost the old server once, when the agent stopped it: an error, retried.
      expect(resumed.databases).toEqual([expect.objectContaining({ database: 'app', initialCopyDone: true, lagBytes: expect.any(Number) })]);
      expect(await serverVersion(Instance.parse((await call('GET', `/v1/instances/${id}`)).body).gatewayPort)).toBe(version(15));

      expect((await call('DELETE', `/v1/instances/${id}/blue-green/op-gone`)).status).toBe(204);
      expect((await call('DELETE', `/v1/instances/${id}/blue-green/op-gone`)).status).toBe(204);

      expect(await exists(green)).toBe(false);
      expect((await call('GET', `/v1/instances/${id}/blue-green/op-gone`)).status).toBe(404);
      expect(await adminRows(source, 'SELECT slot_name FROM pg_replication_slots')).toEqual([]);
      expect(await adminRows(source, `SELECT pubname FROM pg_publication WHERE pubname = '${upgradeName}'`)).toEqual([]);
      expect(await appQuery(source.port, password, 'SELECT count(*)::int AS n FROM items')).toEqual([{ n: 200 }]);
      expect((await call('DELETE', `/v1/instances/${id}`)).status).toBe(204);
    }, 120_000);
  });
});
