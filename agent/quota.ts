import { constants } from 'node:fs';
import { access, readdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { InstanceId, type DiskQuota, type HostInfo, type LimitEnforcement } from '#core/agent-api.ts';
import type { HostedInstance } from './backups/service.ts';
import type { InstanceManager } from './instances.ts';
import { errorMessage, log } from './log.ts';
import { adminRole } from './postgres.ts';
import { connectAdmin } from './tables.ts';
import { directoryBytes } from './usage.ts';

/**
 * Resource limits on this host. Disk: the agent measures each running primary's data directory every
 * `intervalMs`; beyond the spec's `diskQuotaBytes` it makes the server refuse writes
 * (`ALTER SYSTEM SET default_transaction_read_only = on`, reloaded, so open sessions get it at their next
 * transaction) and logs an alert; back under (data deleted and VACUUM FULL, or a bigger quota), writes are
 * allowed again. The agent's own role keeps writing (provisioning on restart, backups). CPU and memory:
 * reported, never claimed (see cgroupLimits).
 */

export interface DiskQuotas {
  /** The instance manager, checking an instance as soon as it is ensured (a raised quota lifts the refusal at once). */
  checkingEnsured(manager: InstanceManager): InstanceManager;
  /** The last check of instance `id`; undefined before its first check or without a quota. */
  status(id: string): DiskQuota | undefined;
  start(): void;
  stop(): Promise<void>;
}

export interface DiskQuotaOptions {
  dataDir: string;
  instances: () => Pick<InstanceManager, 'describe'>;
  intervalMs: number;
}

export function createDiskQuotas({ dataDir, instances, intervalMs }: DiskQuotaOptions): DiskQuotas {
  const instancesDir = join(dataDir, 'instances');
  const statuses = new Map<string, DiskQuota>();
  let timer: NodeJS.Timeout | undefined;
  // Checks run one at a time, so two never alter the same server at once.
  let queue: Promise<void> = Promise.resolve();
  let roundQueued = false;
  const enqueue = (task: () => Promise<void>) => {
    queue = queue.then(task).catch((error: unknown) => log('warn', 'disk quota check failed', { error: errorMessage(error) }));
  };

  async function check(id: string): Promise<void> {
    const instance = instances().describe(id);
    const limitBytes = instance?.spec.diskQuotaBytes;
    if (!instance || limitBytes === undefined) {
      statuses.delete(id);
      return;
    }
    // A (re)starting server keeps its last check until it runs.
    if (instance.status !== 'running') return;
    const usedBytes = await directoryBytes(instance.paths.data);
    const exceeded = usedBytes > limitBytes;
    await enforce(id, instance, exceeded, { limitBytes, usedBytes });
    statuses.set(id, { limitBytes, usedBytes, exceeded, checkedAt: new Date().toISOString() });
  }

  async function checkAll(): Promise<void> {
    const ids = (await readdir(instancesDir).catch(() => [])).filter((name) => InstanceId.safeParse(name).success);
    for (const id of ids) {
      await check(id).catch((error: unknown) => {
        // A server stopping under the check (a restart) is checked again next round.
        if (instances().describe(id)?.status === 'running') log('warn', 'disk quota check failed', { instance: id, error: errorMessage(error) });
      });
    }
  }

  return {
    checkingEnsured: (manager) => ({
      ...manager,
      async ensure(...args) {
        const instance = await manager.ensure(...args);
        // A raised quota lifts the refusal now rather than a round later (a restarting server: once it runs).
        enqueue(() => check(args[0]).catch(() => undefined));
        return instance;
      },
    }),
    status: (id) => statuses.get(id),
    start() {
      timer = setInterval(() => {
        // A slow round (a large data directory) skips the ticks it overlaps.
        if (roundQueued) return;
        roundQueued = true;
        enqueue(() => checkAll().finally(() => { roundQueued = false; }));
      }, intervalMs);
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      await queue;
    },
  };
}

/**
 * Writes are refused through postgresql.auto.conf, which survives restarts; the agent reads back what the
 * file holds (pg_file_settings) every round, so a restored or promoted data directory is corrected too.
 */
async function enforce(id: string, instance: HostedInstance, exceeded: boolean, usage: { limitBytes: number; usedBytes: number }): Promise<void> {
  const client = await connectAdmin(instance, 'postgres');
  try {
    // This session writes whatever the server's default.
    await client.query('SET default_transaction_read_only = off');
    const { rows: [{ refused }] } = await client.query<{ refused: boolean }>(`
      SELECT count(*) > 0 AS refused FROM pg_file_settings
      WHERE name = 'default_transaction_read_only' AND sourcefile LIKE '%/postgresql.auto.conf' AND setting = 'on'`);
    if (exceeded === refused) return;
    if (exceeded) {
      // The agent's own sessions (provisioning at every start, backups) must write still.
      await client.query(`ALTER ROLE ${client.escapeIdentifier(adminRole)} SET default_transaction_read_only = off`);
      await client.query('ALTER SYSTEM SET default_transaction_read_only = on');
      await client.query('SELECT pg_reload_conf()');
      log('error', 'disk quota exceeded: the server refuses writes until the data fits again', { instance: id, ...usage });
    } else {
      await client.query('ALTER SYSTEM RESET default_transaction_read_only');
      await client.query('SELECT pg_reload_conf()');
      log('info', 'back under the disk quota: writes allowed again', { instance: id, ...usage });
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * CPU and memory limits would need the servers in cgroups (v2, `cpu.max` and `memory.max`) that the host
 * delegates to the agent. The agent does not place its servers in cgroups, so it never claims these limits;
 * the detail says what the host would allow, for the operator.
 */
export async function cgroupLimits(): Promise<{ cpu: LimitEnforcement; memory: LimitEnforcement }> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const mount = mountinfo.split('\n').find((line) => line.split(' - ')[1]?.startsWith('cgroup2 '))?.split(' ')[4];
  const membership = (await readFile('/proc/self/cgroup', 'utf8').catch(() => '')).split('\n');
  const own = membership.find((line) => line.startsWith('0::'))?.slice(3);
  const dir = mount && own !== undefined ? resolve(mount, `.${own}`) : undefined;
  // `4:memory:/…`, `1:cpu,cpuacct:/…`: a cgroup v1 hierarchy, which is the host's to manage, not delegated.
  const v1 = (controller: string) => membership.some((line) => line.split(':')[1]?.split(',').includes(controller));
  const controllers = dir ? (await readFile(join(dir, 'cgroup.controllers'), 'utf8').catch(() => '')).trim().split(/\s+/).filter(Boolean) : [];
  const writable = dir !== undefined && await access(join(dir, 'cgroup.subtree_control'), constants.W_OK).then(() => true, () => false);
  const limit = (controller: 'cpu' | 'memory'): LimitEnforcement => {
    let why: string;
    if (!dir) why = 'the host has no cgroup v2 hierarchy for the agent';
    else if (!controllers.includes(controller)) {
      why = `the host does not give the ${controller} controller to the agent's cgroup v2 (${dir} has: ${controllers.join(', ') || 'none'})`
        + (v1(controller) ? `; ${controller} is a cgroup v1 hierarchy here, which the agent does not use` : '');
    } else if (!writable) why = `the agent cannot create cgroups under ${dir} (not delegated to its user)`;
    else why = `the host delegates the ${controller} controller (${dir}), but the agent does not place its servers in cgroups yet`;
    return { enforced: false, detail: `not enforced: ${why}` };
  };
  return { cpu: limit('cpu'), memory: limit('memory') };
}

/** What GET /v1/host says about limits. */
export async function hostLimits(intervalMs: number): Promise<HostInfo['limits']> {
  return {
    ...await cgroupLimits(),
    disk: {
      enforced: true,
      detail: `enforced by the agent: it measures each server's data directory every ${intervalMs / 1000} s and, beyond the plan's disk, `
        + 'makes the server refuse writes (default_transaction_read_only) and logs an alert until the data fits again',
    },
  };
}
