import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { HostInfo, Instance } from '#core/agent-api.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';
import { agentCaller, appInstanceSpec, eventually } from '../test/helpers/agent.ts';
import { percentile, timeEach } from './timing.ts';

/**
 * `npm run bench:gateway`: what the gateway (the agent's TCP proxy, the stable endpoint) costs, against
 * the server's own port on the same run: a query round trip (`SELECT 1` on one connection) and a new
 * connection (TCP + startup + SCRAM), sequentially.
 */

const queries = Number(process.env.BENCH_QUERIES ?? 5000);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 300);
const secret = 'gateway-bench-secret';
const password = 'gateway bench password';

const connectTo = async (port: number) => {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'app', password, database: 'app' });
  await client.connect();
  return client;
};

const tempDir = await mkdtemp(join(tmpdir(), 'dbplane-bench-gateway-'));
let agent: AgentProcess | undefined;
const call = agentCaller(() => agent!, secret);
const rows: string[] = [];
try {
  agent = await spawnAgent({ dataDir: tempDir, secret });
  const host = HostInfo.parse((await call('GET', '/v1/host')).body);
  const spec = appInstanceSpec(host, password, { settings: { shared_buffers: '64MB', max_connections: '50' } });
  await call('PUT', '/v1/instances/gw-db', spec);
  const instance = await eventually(async () => {
    const found = Instance.parse((await call('GET', '/v1/instances/gw-db')).body);
    return found.status === 'running' ? found : undefined;
  }, 60_000);

  for (const [path, port] of [['server port (direct)', instance.port], ['gateway (stable endpoint)', instance.gatewayPort]] as const) {
    const client = await connectTo(port);
    const roundTrips = await timeEach(queries, () => client.query('SELECT 1'));
    await client.end();
    const connects = await timeEach(connections, async () => (await connectTo(port)).end());
    rows.push(`| ${path} | ${percentile(roundTrips, 50).toFixed(3)} ms | ${percentile(roundTrips, 99).toFixed(3)} ms | ${percentile(connects, 50).toFixed(2)} ms | ${percentile(connects, 99).toFixed(2)} ms |`);
  }
} finally {
  await agent?.stop();
  await rm(tempDir, { recursive: true, force: true });
}

console.log(`## Gateway — \`npm run bench:gateway\` (${new Date().toISOString()}, ${cpus().length} × ${cpus()[0]?.model}, node ${process.version})

${queries} sequential \`SELECT 1\` on one connection; ${connections} sequential new connections (SCRAM), PostgreSQL 17.

| path | query p50 | query p99 | connect p50 | connect p99 |
|---|---|---|---|---|
${rows.join('\n')}`);
