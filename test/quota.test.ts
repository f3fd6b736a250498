import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostInfo, Instance, InstanceUsage, type EnsureInstance } from '#core/agent-api.ts';
import { findPlan } from '#core/catalog.ts';
import { resourceLimits } from '#core/model.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';
import { agentCaller, appInstanceSpec, appQuery, eventually } from './helpers/agent.ts';

const secret = 'quota-test-secret';
const password = 'quota test password';
const id = 'quota-db';
const tiny = 1024 * 1024;
const roomy = 10 * 1024 ** 3;

let dataDir: string;
let agent: AgentProcess;
const call = agentCaller(() => agent, secret);

async function ensureRunning(spec: EnsureInstance): Promise<Instance> {
  expect((await call('PUT', `/v1/instances/${id}`, spec)).status).toBe(200);
  return eventually(async () => {
    const instance = Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
    return instance.status === 'running' ? instance : undefined;
  }, 60_000);
}

/** Waits until the agent's check has found the data over (or under) the quota. */
async function quotaExceeded(exceeded: boolean, limitBytes: number) {
  return eventually(async () => {
    const { diskQuota } = InstanceUsage.parse((await call('GET', `/v1/instances/${id}/usage`)).body);
    return diskQuota?.exceeded === exceeded && diskQuota.limitBytes === limitBytes ? diskQuota : undefined;
  });
}

describe('disk quota', () => {
  let spec: EnsureInstance;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'dbplane-quota-'));
    // The agent inherits the environment: a short check interval for the test.
    process.env.DBPLANE_AGENT_QUOTA_INTERVAL_MS = '200';
    agent = await spawnAgent({ dataDir, secret });
    spec = appInstanceSpec(HostInfo.parse((await call('GET', '/v1/host')).body), password);
  });

  afterAll(async () => {
    delete process.env.DBPLANE_AGENT_QUOTA_INTERVAL_MS;
    await agent?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('reports the disk quota as enforced and CPU and memory only with a reason', async () => {
    const { limits } = HostInfo.parse((await call('GET', '/v1/host')).body);

    expect(limits.disk.enforced).toBe(true);
    // The agent does not place servers in cgroups: never claimed, whatever the host allows.
    for (const limit of [limits.cpu, limits.memory]) {
      expect(limit.enforced).toBe(false);
      expect(limit.detail).toMatch(/^not enforced: /);
    }
  });

  it('refuses writes beyond the quota and allows them again once the quota is raised', async () => {
    const instance = await ensureRunning({ ...spec, diskQuotaBytes: roomy });
    await appQuery(instance.gatewayPort, password, 'CREATE TABLE notes (body text); INSERT INTO notes VALUES (\'before\')');
    expect(await quotaExceeded(false, roomy)).toMatchObject({ limitBytes: roomy });

    // A fresh cluster alone is tens of MB: far beyond 1 MiB.
    await ensureRunning({ ...spec, diskQuotaBytes: tiny });
    const over = await quotaExceeded(true, tiny);
    expect(over.usedBytes).toBeGreaterThan(tiny);
    await expect(appQuery(instance.gatewayPort, password, "INSERT INTO notes VALUES ('over')")).rejects.toThrow(/read-only transaction/);
    expect(await appQuery(instance.gatewayPort, password, 'SELECT count(*)::int AS n FROM notes')).toEqual([{ n: 1 }]);

    // A restart while writes are refused (new settings): the agent's own provisioning still writes, and the refusal holds.
    await ensureRunning({ ...spec, settings: { ...spec.settings, max_connections: '21' }, diskQuotaBytes: tiny });
    await expect(appQuery(instance.gatewayPort, password, "INSERT INTO notes VALUES ('over')")).rejects.toThrow(/read-only transaction/);
    // What the README tells a user to do to make room (delete, VACUUM FULL): opt out in the session.
    const session = new pg.Client({ host: '127.0.0.1', port: instance.gatewayPort, user: 'app', password, database: 'app' });
    await session.connect();
    try {
      for (const sql of ['SET default_transaction_read_only = off', "DELETE FROM notes WHERE body = 'none'", 'VACUUM FULL notes']) await session.query(sql);
    } finally {
      await session.end();
    }

    // A bigger quota (as after a plan change to a bigger disk), the settings unchanged: writes work again.
    await ensureRunning({ ...spec, settings: { ...spec.settings, max_connections: '21' }, diskQuotaBytes: roomy });
    await quotaExceeded(false, roomy);
    await appQuery(instance.gatewayPort, password, "INSERT INTO notes VALUES ('after')");
    expect(await appQuery(instance.gatewayPort, password, 'SELECT body FROM notes ORDER BY body')).toEqual([{ body: 'after' }, { body: 'before' }]);
  });
});

describe('resource limits of a database', () => {
  const plan = findPlan('starter-512')!;
  const enforced = { enforced: true, detail: 'enforced by the agent' };
  const notEnforced = { enforced: false, detail: 'not enforced: no cgroup' };

  it("shows the plan's amounts, enforced only where every host enforces them", () => {
    const limits = resourceLimits(plan, [
      { limits: { cpu: notEnforced, memory: enforced, disk: enforced } },
      { limits: { cpu: enforced, memory: notEnforced, disk: enforced } },
    ]);

    expect(limits).toEqual({
      cpu: { limit: 0.25, unit: 'vCPU', ...notEnforced },
      memory: { limit: 512 * 1024 ** 2, unit: 'bytes', ...notEnforced },
      disk: { limit: 5 * 1024 ** 3, unit: 'bytes', ...enforced },
    });
  });

  it('claims nothing before any host has reported', () => {
    expect(Object.values(resourceLimits(plan, [])).map((limit) => limit.enforced)).toEqual([false, false, false]);
  });
});
