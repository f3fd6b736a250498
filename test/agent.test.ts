import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostInfo, Instance, type EnsureInstance } from '#core/agent-api.ts';
import { scramVerifier } from '#core/scram.ts';
import { agentCaller, appQuery, eventually } from './helpers/agent.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';

const secret = 'test-secret';
let password = 'correct horse battery staple';
const runningAsRoot = process.getuid?.() === 0;

let dataDir: string;
let agent: AgentProcess;

const call = agentCaller(() => agent, secret);


async function instanceWithStatus(id: string, status: Instance['status']): Promise<Instance> {
  return eventually(async () => {
    const { body } = await call('GET', `/v1/instances/${id}`);
    const instance = Instance.parse(body);
    return instance.status === status ? instance : undefined;
  });
}

const query = <T extends pg.QueryResultRow>(port: number, sql: string) => appQuery<T>(port, password, sql);

async function postmasterPid(id: string): Promise<number> {
  return Number((await readFile(join(dataDir, 'instances', id, 'data', 'postmaster.pid'), 'utf8')).split('\n')[0]);
}

async function postgresProcessesUnder(dir: string): Promise<number[]> {
  const pids = (await readdir('/proc')).filter((name) => /^\d+$/.test(name));
  const matches = await Promise.all(pids.map(async (pid) => {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    return cmdline.includes('postgres') && cmdline.includes(dir) ? Number(pid) : undefined;
  }));
  return matches.filter((pid) => pid !== undefined);
}

function portAcceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

describe('agent', () => {
  let versions: { app: string; other: string };
  let spec: EnsureInstance;
  let port: number;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'dbplane-agent-'));
    agent = await spawnAgent({ dataDir, secret, faults: true });
  });

  afterAll(async () => {
    await agent?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('answers 401 without the secret or with a wrong one', async () => {
    const missing = await fetch(`${agent.url}/v1/host`);
    const wrong = await call('GET', '/v1/host', undefined, 'not-the-secret');

    expect(missing.status).toBe(401);
    expect(missing.headers.get('content-type')).toBe('application/problem+json');
    expect(wrong.status).toBe(401);
  });

  it('lists the installed majors with what each can do on this host', async () => {
    const { status, body } = await call('GET', '/v1/host');

    expect(status).toBe(200);
    const host = HostInfo.parse(body);
    const majors = new Set(host.versions.map((v) => Number(v.version.split('.')[0])));
    expect([...majors].sort()).toEqual([14, 15, 16, 17, 18]);
    expect(host.versions.every((v) => v.capabilities.server)).toBe(true);
    const v15 = host.versions.find((v) => v.version.startsWith('15.'));
    expect(v15?.capabilities).toEqual({ server: true, logicalDump: true, pgUpgrade: true });
    expect(host.versions.find((v) => v.version.startsWith('18.'))?.capabilities.logicalDump).toBe(false);
    expect(host.volumeEncryption).toBe(false);
    expect((await call('GET', '/v1/host')).body.hostId).toBe(host.hostId);

    versions = {
      app: host.versions.find((v) => v.version.startsWith('17.'))!.version,
      other: host.versions.find((v) => v.version.startsWith('14.'))!.version,
    };
    spec = {
      engine: 'postgresql',
      version: versions.app,
      role: { name: 'app', scramVerifier: scramVerifier(password) },
      database: 'app',
      settings: { shared_buffers: '32MB', max_connections: '20' },
    };
  });

  it('rejects an invalid spec with 400 and a pointer per issue', async () => {
    const { status, contentType, body } = await call('PUT', '/v1/instances/app-db', {
      ...spec, database: 'Not A Name', settings: { port: '5432' },
    });

    expect(status).toBe(400);
    expect(contentType).toBe('application/problem+json');
    expect(body.errors.map((e: { pointer: string }) => e.pointer)).toContain('/body/database');
  });

  it('creates an instance that the customer role can use once it is running', async () => {
    const { status, body } = await call('PUT', '/v1/instances/app-db', spec);

    expect(status).toBe(200);
    expect(Instance.parse(body)).toMatchObject({ id: 'app-db', version: versions.app, host: '127.0.0.1', status: 'starting' });
    port = (await instanceWithStatus('app-db', 'running')).port;
    await query(port, 'CREATE TABLE notes (id int PRIMARY KEY, body text)');
    await query(port, "INSERT INTO notes VALUES (1, 'kept')");
    expect(await query(port, 'SELECT body FROM notes')).toEqual([{ body: 'kept' }]);
    expect(await query(port, 'SHOW shared_buffers')).toEqual([{ shared_buffers: '32MB' }]);
  });

  it.runIf(runningAsRoot)('runs the server as dbplane-pg when the agent runs as root', async () => {
    const uid = Number(execFileSync('id', ['-u', 'dbplane-pg'], { encoding: 'utf8' }).trim());

    expect((await stat(join(dataDir, 'instances', 'app-db', 'data'))).uid).toBe(uid);
    const status = await readFile(`/proc/${await postmasterPid('app-db')}/status`, 'utf8');
    expect(status).toMatch(new RegExp(`^Uid:\\s+${uid}\\s`, 'm'));
  });

  it('changes nothing when ensured again with the same spec', async () => {
    const pid = await postmasterPid('app-db');

    const { status, body } = await call('PUT', '/v1/instances/app-db', spec);

    expect(status).toBe(200);
    expect(body).toMatchObject({ port, status: 'running' });
    expect(await postmasterPid('app-db')).toBe(pid);
  });

  it('restarts the server with new settings when they change', async () => {
    spec = { ...spec, settings: { ...spec.settings, shared_buffers: '48MB' } };

    const { body } = await call('PUT', '/v1/instances/app-db', spec);

    expect(body).toMatchObject({ port, status: 'starting' });
    await instanceWithStatus('app-db', 'running');
    expect(await query(port, 'SHOW shared_buffers')).toEqual([{ shared_buffers: '48MB' }]);
  });

  it('changes the role password in place, without a restart', async () => {
    const pid = await postmasterPid('app-db');
    password = 'a new password';
    spec = { ...spec, role: { ...spec.role, scramVerifier: scramVerifier(password) } };

    await call('PUT', '/v1/instances/app-db', spec);

    await instanceWithStatus('app-db', 'running');
    expect(await query(port, 'SELECT count(*)::int AS n FROM notes')).toEqual([{ n: 1 }]);
    expect(await postmasterPid('app-db')).toBe(pid);
  });

  it('answers 409 when asked for another version of an existing instance', async () => {
    const { status, contentType } = await call('PUT', '/v1/instances/app-db', { ...spec, version: versions.other });

    expect(status).toBe(409);
    expect(contentType).toBe('application/problem+json');
  });

  it('restarts a server whose postmaster was killed, with its data', async () => {
    const killed = await postmasterPid('app-db');

    process.kill(killed, 'SIGKILL');

    const rows = await eventually(async () => {
      if ((await postmasterPid('app-db')) === killed) return undefined;
      const { body } = await call('GET', '/v1/instances/app-db');
      return body.status === 'running' ? query<{ body: string }>(port, 'SELECT body FROM notes') : undefined;
    });
    expect(rows).toEqual([{ body: 'kept' }]);
  });

  it('fails the ensure call when an ensureInstance fault is armed', async () => {
    await call('PUT', '/v1/faults', { operation: 'ensureInstance', message: 'control plane says no' });

    const { status, contentType, body } = await call('PUT', '/v1/instances/app-db', spec);

    expect(status).toBe(500);
    expect(contentType).toBe('application/problem+json');
    expect(body.detail).toBe('control plane says no');
  });

  it('marks an instance failed, with the reason, when its server cannot start', async () => {
    await call('PUT', '/v1/faults', { operation: 'startServer', instanceId: 'broken-db', message: 'disk on fire' });

    await call('PUT', '/v1/instances/broken-db', { ...spec, version: versions.other });

    expect(await instanceWithStatus('broken-db', 'failed')).toMatchObject({ reason: 'disk on fire' });
  });

  it('gives up on a server that keeps crashing, with the reason', async () => {
    await call('PUT', '/v1/instances/crashy-db', { ...spec, version: versions.other, settings: { shared_buffers: 'lots' } });

    const instance = await instanceWithStatus('crashy-db', 'failed');

    expect(instance.reason).toMatch(/exited 5 times within a minute; last: exit code 1: .*invalid value for parameter "shared_buffers"/);
    expect((await call('DELETE', '/v1/instances/crashy-db')).status).toBe(204);
  });

  it('deletes an instance: its server stops and its folder is gone', async () => {
    const { body } = await call('PUT', '/v1/instances/temp-db', { ...spec, version: versions.other });
    const tempPort = (await instanceWithStatus('temp-db', 'running')).port;
    await call('PUT', '/v1/faults', { operation: 'deleteInstance', instanceId: 'temp-db' });
    expect((await call('DELETE', '/v1/instances/temp-db')).status).toBe(500);

    const deleted = await call('DELETE', '/v1/instances/temp-db');

    expect(body.status).toBe('starting');
    expect(deleted.status).toBe(204);
    expect((await call('GET', '/v1/instances/temp-db')).status).toBe(404);
    await expect(stat(join(dataDir, 'instances', 'temp-db'))).rejects.toThrow(/ENOENT/);
    expect(await portAcceptsConnections(tempPort)).toBe(false);
    expect((await call('DELETE', '/v1/instances/temp-db')).status).toBe(204);
    expect((await call('DELETE', '/v1/instances/broken-db')).status).toBe(204);
  });

  it('leaves no postgres process behind when stopped, and brings instances back when restarted', async () => {
    await agent.stop();

    expect(await postgresProcessesUnder(dataDir)).toEqual([]);

    agent = await spawnAgent({ dataDir, secret, faults: true });
    const instance = await instanceWithStatus('app-db', 'running');
    expect(instance.port).toBe(port);
    expect(await query(port, 'SELECT body FROM notes')).toEqual([{ body: 'kept' }]);
  });

  it('replaces a postmaster left running by a killed agent', async () => {
    const orphan = await postmasterPid('app-db');
    process.kill(agent.pid, 'SIGKILL');
    expect(await postgresProcessesUnder(dataDir)).toContain(orphan);

    agent = await spawnAgent({ dataDir, secret });

    await instanceWithStatus('app-db', 'running');
    expect(await postmasterPid('app-db')).not.toBe(orphan);
    expect(await postgresProcessesUnder(dataDir)).not.toContain(orphan);
    expect(await query(port, 'SELECT body FROM notes')).toEqual([{ body: 'kept' }]);
  });
});
