import { mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { createFaults } from './faults.ts';
import { findPostgresInstalls, inspectHost } from './host.ts';
import { createInstanceManager } from './instances.ts';
import { errorMessage, log } from './log.ts';
import { ensureTraversable, resolveRunAs } from './postgres.ts';
import { createAgentServer } from './server.ts';

/** The agent process: `tsx agent/main.ts`, configured by environment (see spawn.ts for the other side). */
const Env = z.object({
  DBPLANE_AGENT_DATA_DIR: z.string().min(1),
  DBPLANE_AGENT_SECRET: z.string().min(1),
  DBPLANE_AGENT_PORT: z.coerce.number().int().min(0).max(65535).default(0),
  DBPLANE_AGENT_FAULTS: z.enum(['0', '1']).default('0'),
});

const env = Env.parse(process.env);
const dataDir = env.DBPLANE_AGENT_DATA_DIR;
mkdirSync(dataDir, { recursive: true });

const installs = findPostgresInstalls(fileURLToPath(new URL('../node_modules', import.meta.url)));
const faults = createFaults();
const runAs = await resolveRunAs();
for (const path of [dataDir, ...installs.flatMap((i) => [i.binDir, i.libDir])]) {
  await ensureTraversable(path, runAs, (message, dir) => log('info', message, { path: dir }));
}
const instances = createInstanceManager({ dataDir, installs, runAs, faults });
await instances.resumeAll();

const server = createAgentServer(env.DBPLANE_AGENT_SECRET, {
  host: inspectHost(dataDir, installs),
  instances,
  faults: env.DBPLANE_AGENT_FAULTS === '1' ? faults : undefined,
});

server.listen(env.DBPLANE_AGENT_PORT, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`${JSON.stringify({ agent: 'listening', url: `http://127.0.0.1:${port}` })}\n`);
  log('info', 'agent listening', { port, versions: installs.map((i) => i.version), faults: env.DBPLANE_AGENT_FAULTS === '1' });
});

let shuttingDown = false;

/** Stops every server (fast shutdown) before exiting, so a stopped agent leaves no postgres behind. */
async function shutdown(signal: NodeJS.Signals): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  log('info', 'agent stopping', { signal });
  server.close();
  server.closeAllConnections();
  try {
    await instances.stopAll();
    process.exit(0);
  } catch (error) {
    log('error', 'agent stopped with errors', { error: errorMessage(error) });
    process.exit(1);
  }
}

process.on('SIGTERM', (signal) => void shutdown(signal));
process.on('SIGINT', (signal) => void shutdown(signal));
