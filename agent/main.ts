import { mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { KeyRing } from './backups/keyring.ts';
import { createBackupService } from './backups/service.ts';
import { createFaults } from './faults.ts';
import { findPostgresInstalls, inspectHost, missingCommands } from './host.ts';
import { createInstanceManager } from './instances.ts';
import { errorMessage, log } from './log.ts';
import { ensureTraversable, resolveRunAs } from './postgres.ts';
import { createDiskQuotas, hostLimits } from './quota.ts';
import { createAgentServer } from './server.ts';

/** The agent process: `tsx agent/main.ts`, configured by environment (see spawn.ts for the other side). */
const Env = z.object({
  DBPLANE_AGENT_DATA_DIR: z.string().min(1),
  DBPLANE_AGENT_SECRET: z.string().min(1),
  DBPLANE_AGENT_PORT: z.coerce.number().int().min(0).max(65535).default(0),
  DBPLANE_AGENT_FAULTS: z.enum(['0', '1']).default('0'),
  /** Where backups and WAL go: one folder per zone (zone-a, zone-b, zone-c), stand-ins for S3 buckets. */
  DBPLANE_AGENT_BACKUP_DIR: z.string().min(1).optional(),
  /** How often each server's data directory is measured against its disk quota. */
  DBPLANE_AGENT_QUOTA_INTERVAL_MS: z.coerce.number().int().min(100).default(5_000),
  /** How often the server folders of earlier majors whose rollback period is over are looked for and removed. */
  DBPLANE_AGENT_RETIRED_SWEEP_MS: z.coerce.number().int().min(100).default(3_600_000),
  // The master key (DBPLANE_MASTER_KEY_FILE locally, MASTER_KEY_ID with KMS) is read by #core/keys.ts when first needed.
});

const env = Env.parse(process.env);
const dataDir = env.DBPLANE_AGENT_DATA_DIR;
mkdirSync(dataDir, { recursive: true });
const backupDir = env.DBPLANE_AGENT_BACKUP_DIR ?? join(dataDir, 'backups');
mkdirSync(backupDir, { recursive: true, mode: 0o700 });

const missing = missingCommands();
if (missing.length > 0) {
  log('error', 'the agent needs these commands on its PATH', { missing });
  process.exit(1);
}
const installs = findPostgresInstalls(fileURLToPath(new URL('../node_modules', import.meta.url)));
const faults = createFaults();
const runAs = await resolveRunAs();
// The servers' user must get through to their data, their binaries and those binaries' libraries.
for (const path of [dataDir, ...installs.flatMap((i) => [i.binDir, i.libDir])]) {
  await ensureTraversable(path, runAs, (message, dir) => log('info', message, { path: dir }));
}
const keys = new KeyRing();
const backups = createBackupService({
  dataDir, backupDir, secret: env.DBPLANE_AGENT_SECRET, runAs, installs, faults, keys, instances: () => instances,
});
const diskQuotas = createDiskQuotas({ dataDir, instances: () => instances, intervalMs: env.DBPLANE_AGENT_QUOTA_INTERVAL_MS });
const instances = diskQuotas.checkingEnsured(createInstanceManager({ dataDir, installs, runAs, faults, serverSettings: backups.serverSettings }));

const server = createAgentServer(env.DBPLANE_AGENT_SECRET, {
  host: { ...inspectHost(dataDir, installs), limits: await hostLimits(env.DBPLANE_AGENT_QUOTA_INTERVAL_MS) },
  installs,
  instances,
  backups,
  diskQuotas,
  faults: env.DBPLANE_AGENT_FAULTS === '1' ? faults : undefined,
});

// Listen first: the servers' archive_command must name the agent's port, known only now. The
// "listening" line comes once the instances are back.
await new Promise<void>((resolve) => server.listen(env.DBPLANE_AGENT_PORT, '127.0.0.1', resolve));
const { port } = server.address() as AddressInfo;
backups.setAgentUrl(`http://127.0.0.1:${port}`);
await backups.cleanup();
await instances.resumeAll();
diskQuotas.start();
const retiredSweep = setInterval(() => void instances.removeExpiredFolders(), env.DBPLANE_AGENT_RETIRED_SWEEP_MS);
process.stdout.write(`${JSON.stringify({ agent: 'listening', url: `http://127.0.0.1:${port}` })}\n`);
log('info', 'agent listening', { port, versions: installs.map((i) => i.version), faults: env.DBPLANE_AGENT_FAULTS === '1' });

let shuttingDown = false;

/**
 * Stops every server (fast shutdown) before exiting, so a stopped agent leaves no postgres behind.
 * The HTTP server closes after them: a server's last archive_command still reaches the agent.
 */
async function shutdown(signal: NodeJS.Signals): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  log('info', 'agent stopping', { signal });
  try {
    clearInterval(retiredSweep);
    await diskQuotas.stop();
    await Promise.all([instances.stopAll(), backups.stopAll()]);
    server.close();
    server.closeAllConnections();
    process.exit(0);
  } catch (error) {
    log('error', 'agent stopped with errors', { error: errorMessage(error) });
    process.exit(1);
  }
}

process.on('SIGTERM', (signal) => void shutdown(signal));
process.on('SIGINT', (signal) => void shutdown(signal));
