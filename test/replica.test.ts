import { access, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostInfo, Instance, type EnsureInstance } from '#core/agent-api.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';
import { agentCaller, appInstanceSpec, appQuery, eventually } from './helpers/agent.ts';
import { probeWrites } from './helpers/probe.ts';

describe('a streaming replica (real PostgreSQL 17 through the agent)', () => {
  const secret = 'test-secret';
  const password = 'replica password';
  const id = 'replicated-db';
  let dataDir: string;
  let agent: AgentProcess;
  let spec: EnsureInstance;
  const call = agentCaller(() => agent, secret);

  const getInstance = async () => Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
  const replicaNode = async () => (await getInstance()).nodes?.find((n) => n.role === 'replica');
  const replicaPid = async () => Number((await readFile(join(dataDir, 'instances', id, 'replica', 'data', 'postmaster.pid'), 'utf8')).split('\n')[0]);

  const query = <T extends pg.QueryResultRow>(port: number, sql: string) => appQuery<T>(port, password, sql);

  /** The primary's replication slots, read as the admin over its socket. */
  async function slots(): Promise<string[]> {
    const { port } = await getInstance();
    const client = new pg.Client({ host: join(dataDir, 'sockets', String(port)), port, user: 'dbplane_admin', database: 'postgres' });
    await client.connect();
    try {
      return (await client.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots')).rows.map((r) => r.slot_name);
    } finally {
      await client.end();
    }
  }

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'dbplane-replica-'));
    agent = await spawnAgent({ dataDir, secret });
    const host = HostInfo.parse((await call('GET', '/v1/host')).body);
    spec = appInstanceSpec(host, password);
    await call('PUT', `/v1/instances/${id}`, spec);
    await eventually(async () => ((await getInstance()).status === 'running' ? true : undefined), 60_000);
  });

  afterAll(async () => {
    await agent?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('streams rows written on the primary to a read-only replica, and reports its lag down to 0', async () => {
    const { gatewayPort } = await getInstance();
    await query(gatewayPort, 'CREATE TABLE notes (id int PRIMARY KEY, body text)');
    await query(gatewayPort, "INSERT INTO notes VALUES (1, 'before the replica')");

    const ensured = await call('PUT', `/v1/instances/${id}/replica`);
    const again = await call('PUT', `/v1/instances/${id}/replica`);
    const replica = await eventually(async () => {
      const node = await replicaNode();
      return node?.status === 'running' ? node : undefined;
    }, 60_000);
    await query(gatewayPort, "INSERT INTO notes VALUES (2, 'after the replica')");
    const rows = await eventually(async () => {
      const found = await query<{ id: number }>(replica.port, 'SELECT id FROM notes ORDER BY id');
      return found.length === 2 ? found : undefined;
    });
    const write = await query(replica.port, "INSERT INTO notes VALUES (3, 'on the replica')").then(() => 'written', (error: Error) => error.message);
    const caughtUp = await eventually(async () => {
      const node = await replicaNode();
      return node?.lagBytes === 0 ? node : undefined;
    });

    expect(ensured.status).toBe(200);
    expect(again.status).toBe(200);
    expect(Instance.parse(again.body).nodes?.filter((n) => n.role === 'replica')).toHaveLength(1);
    expect(replica.port).not.toBe((await getInstance()).port);
    expect(rows).toEqual([{ id: 1 }, { id: 2 }]);
    expect(write).toMatch(/read-only transaction/);
    expect(caughtUp.lagBytes).toBe(0);
    expect(await slots()).toEqual(['dbplane_replica']);
    const [{ port }] = await query<{ port: string }>(gatewayPort, "SELECT current_setting('port') AS port");
    expect(Number(port)).toBe((await getInstance()).port);
  });

  it('answers a GET with replicaWaitSeconds once the replica has replayed what was just written', async () => {
    const { gatewayPort } = await getInstance();
    await query(gatewayPort, 'CREATE TABLE burst AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 50000) g');
    const started = Date.now();
    const answered = Instance.parse((await call('GET', `/v1/instances/${id}?replicaWaitSeconds=20`)).body);
    const tooLong = await call('GET', `/v1/instances/${id}?replicaWaitSeconds=3600`);

    expect(answered.nodes?.find((n) => n.role === 'replica')).toMatchObject({ status: 'running', lagBytes: 0 });
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(tooLong.status).toBe(400);
    await query(gatewayPort, 'DROP TABLE burst');
  });

  it('restarts the replica after its postmaster is killed', async () => {
    const before = await replicaPid();

    process.kill(before, 'SIGKILL');
    const after = await eventually(async () => {
      const node = await replicaNode();
      const pid = await replicaPid().catch(() => before);
      return node?.status === 'running' && pid !== before ? node : undefined;
    }, 30_000);
    await query((await getInstance()).gatewayPort, "INSERT INTO notes VALUES (4, 'after the crash')");

    expect(await eventually(async () => {
      const found = await query<{ id: number }>(after.port, 'SELECT id FROM notes WHERE id = 4').catch(() => []);
      return found.length === 1 ? found : undefined;
    })).toEqual([{ id: 4 }]);
  });

  /** New connections through the gateway, one committed INSERT each, every 20 ms until stopped: what a client sees. */
  const probeNotes = (gatewayPort: number, firstId: number) =>
    probeWrites((n) => query(gatewayPort, `INSERT INTO notes VALUES (${n}, 'probe')`), { firstId });

  const settingOn = async (port: number, name: string) => (await query<{ value: string }>(port, `SELECT current_setting('${name}') AS value`))[0]!.value;

  it('switches over: the replica becomes the primary behind the same gateway, keeping every acknowledged write', async () => {
    const before = await getInstance();
    const oldReplica = (await replicaNode())!;
    const probe = probeNotes(before.gatewayPort, 1000);
    await new Promise((resolve) => setTimeout(resolve, 300));

    const switched = await call('POST', `/v1/instances/${id}/switchover`, { id: 'first' });
    const retried = await call('POST', `/v1/instances/${id}/switchover`, { id: 'first' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const { longestStallMs } = await probe.stop();
    const after = await getInstance();
    const rows = await query<{ id: number }>(after.gatewayPort, 'SELECT id FROM notes WHERE id BETWEEN 1000 AND 99999');
    const rejoined = await eventually(async () => {
      const node = await replicaNode();
      return node?.status === 'running' && node.lagBytes === 0 ? node : undefined;
    }, 30_000);
    const onReplica = await eventually(async () => {
      const found = await query<{ id: number }>(rejoined.port, 'SELECT id FROM notes WHERE id BETWEEN 1000 AND 99999');
      return found.length === rows.length ? found : undefined;
    });

    expect(switched.status).toBe(200);
    expect(Instance.parse(retried.body).port).toBe(oldReplica.port);
    expect(after.port).toBe(oldReplica.port);
    expect(rejoined.port).toBe(before.port);
    expect(after.gatewayPort).toBe(before.gatewayPort);
    expect(probe.failures).toEqual([]);
    expect(probe.acknowledged.length).toBeGreaterThan(10);
    expect(rows.map((r) => r.id).sort((a, b) => a - b)).toEqual(probe.acknowledged);
    expect(onReplica).toHaveLength(rows.length);
    expect(longestStallMs).toBeLessThan(2_000);
    expect(await settingOn(after.gatewayPort, 'port')).toBe(String(after.port));
    expect(await slots()).toEqual(['dbplane_replica']);
  });

  it('comes back from an agent restart with the roles a switchover left: same primary, its replica streaming', async () => {
    const before = await getInstance();
    await query(before.gatewayPort, "INSERT INTO notes VALUES (5, 'before the agent restart')");

    await agent.stop();
    agent = await spawnAgent({ dataDir, secret });
    const after = await eventually(async () => {
      const instance = await getInstance();
      const replica = instance.nodes?.find((n) => n.role === 'replica');
      return instance.status === 'running' && replica?.status === 'running' && replica.lagBytes === 0 ? instance : undefined;
    }, 60_000);

    expect(after.port).toBe(before.port);
    expect(after.nodes?.map((n) => n.port)).toEqual(before.nodes?.map((n) => n.port));
    expect(await settingOn(after.gatewayPort, 'port')).toBe(String(before.port));
    expect(await query(after.gatewayPort, 'SELECT id FROM notes WHERE id = 5')).toEqual([{ id: 5 }]);
    await query(after.gatewayPort, "INSERT INTO notes VALUES (6, 'after the agent restart')");
  });

  it('rolls a change to smaller settings: replica first, switchover, then the primary, with no failed write', async () => {
    const smaller = { ...spec, settings: { shared_buffers: '16MB', max_connections: '15' } };
    const { gatewayPort } = await getInstance();
    const probe = probeNotes(gatewayPort, 100_000);

    const replicaFirst = await call('PUT', `/v1/instances/${id}?restart=replica`, smaller);
    const replicaRestarted = await eventually(async () => {
      const node = await replicaNode();
      return node?.status === 'running' && node.lagBytes !== undefined && await settingOn(node.port, 'shared_buffers') === '16MB' ? node : undefined;
    }, 30_000);
    const primaryMeanwhile = await settingOn(gatewayPort, 'max_connections');
    // A hot standby may not allow fewer connections than its primary: it keeps 20 until the primary has 15.
    const replicaMeanwhile = await settingOn(replicaRestarted.port, 'max_connections');
    const switched = await call('POST', `/v1/instances/${id}/switchover`, { id: 'second' });
    const ensured = await call('PUT', `/v1/instances/${id}`, smaller);
    await eventually(async () => ((await getInstance()).status === 'running' ? true : undefined), 30_000);
    const replica = await eventually(async () => {
      const node = await replicaNode();
      return node?.status === 'running' && node.lagBytes === 0 && await settingOn(node.port, 'max_connections') === '15' ? node : undefined;
    }, 30_000);
    const { longestStallMs } = await probe.stop();

    expect(replicaFirst.status).toBe(200);
    expect(primaryMeanwhile).toBe('20');
    expect(replicaMeanwhile).toBe('20');
    expect(switched.status).toBe(200);
    expect(ensured.status).toBe(200);
    expect(await settingOn(gatewayPort, 'max_connections')).toBe('15');
    expect(await settingOn(gatewayPort, 'shared_buffers')).toBe('16MB');
    expect(await settingOn(replica.port, 'shared_buffers')).toBe('16MB');
    expect(probe.failures).toEqual([]);
    const rows = await query<{ id: number }>(gatewayPort, 'SELECT id FROM notes WHERE id >= 100000 ORDER BY id');
    expect(rows.map((r) => r.id)).toEqual(probe.acknowledged);
    expect(longestStallMs).toBeLessThan(3_000);
    spec = smaller;
  });

  it('drops the slot and the files when the replica is deleted', async () => {
    const deleted = await call('DELETE', `/v1/instances/${id}/replica`);
    const deletedAgain = await call('DELETE', `/v1/instances/${id}/replica`);

    expect(deleted.status).toBe(204);
    expect(deletedAgain.status).toBe(204);
    expect(await slots()).toEqual([]);
    expect((await getInstance()).nodes).toEqual([expect.objectContaining({ role: 'primary', status: 'running' })]);
    await expect(access(join(dataDir, 'instances', id, 'replica'))).rejects.toThrow();
  });

  it('removes the primary and its replica when the instance is deleted', async () => {
    const replica = Instance.parse((await call('PUT', `/v1/instances/${id}/replica`)).body).nodes!.find((n) => n.role === 'replica')!;
    await eventually(async () => ((await replicaNode())?.status === 'running' ? true : undefined), 60_000);

    const deleted = await call('DELETE', `/v1/instances/${id}`);

    expect(deleted.status).toBe(204);
    expect((await call('GET', `/v1/instances/${id}`)).status).toBe(404);
    await expect(query(replica.port, 'SELECT 1')).rejects.toThrow();
    await expect(access(join(dataDir, 'instances', id))).rejects.toThrow();
  });
});
