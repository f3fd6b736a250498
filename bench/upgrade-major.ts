import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { startRuntime } from '../local/runtime.ts';
import { apiClient, newTenant } from '../test/helpers/api.ts';
import { measureChange, ms, probeIntervalMs, succeeded } from './probe.ts';

/**
 * `npm run bench:upgrade-major`: a major upgrade by blue/green (PostgreSQL 15 → 17, logical replication) through the
 * API, of a database of BENCH_MAJOR_MB (default 1100) MB, while the probe writes through the database's URL every
 * 50 ms: failed writes, longest stall, total duration, state transitions, acknowledged writes lost, and how long the
 * agent held new connections at the cutover and how long the initial copy took. The runtime runs with the waits
 * it deploys (no `fastWaits`): how soon the control plane sees the copy done is part of the duration.
 */

const targetMb = Number(process.env.BENCH_MAJOR_MB ?? 1100);
const [from, to] = ['15', '17'];
const dataDir = await mkdtemp(join(tmpdir(), 'dbplane-bench-upgrade-major-'));
const runtime = await startRuntime({ dataDir, port: 0 });
const load: number[] = [];
const sampleLoad = setInterval(() => load.push(loadavg()[0]!), 5_000);
let report: string;
try {
  const { api } = await newTenant(apiClient(runtime.apiUrl, runtime.adminToken), runtime.apiUrl, 'bench');
  const created = await succeeded(api, '/databases', { name: 'big', engine: 'postgresql', plan: 'starter-2048', version: from });
  const id: string = created.database.id;
  const database = (await api.get(`/databases/${id}`)).body;
  const url = new URL(database.url);
  url.password = created.password;
  const client = new pg.Client({ connectionString: url.toString() });
  await client.connect();
  const rows = Math.ceil((targetMb * 1e6) / 1100);
  const loadStarted = performance.now();
  await client.query('CREATE TABLE blobs (id bigint PRIMARY KEY, body text NOT NULL)');
  // 1 kB a row: under the TOAST threshold, so stored as is (and streamed as is).
  for (let done = 0; done < rows; done += 100_000) {
    await client.query('INSERT INTO blobs SELECT g, repeat(md5(g::text), 32) FROM generate_series($1::bigint, $2::bigint) g', [done + 1, Math.min(rows, done + 100_000)]);
  }
  await client.query('CREATE TABLE probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL)');
  const loadMs = performance.now() - loadStarted;
  const [{ bytes }] = (await client.query<{ bytes: string }>('SELECT pg_database_size(current_database())::text AS bytes')).rows;
  await client.end();
  const dataBytes = Number(execFileSync('du', ['-sb', join(dataDir, 'agent', 'instances', id, 'data')]).toString().split('\t')[0]);

  let operationId = '';
  const upgrade = await measureChange(api, url.toString(), database.version, to, async () => {
    const started = await api.post(`/databases/${id}/upgrade`, { version: to });
    if (started.status !== 202) throw new Error(`upgrade ${from} → ${to}: ${started.status} ${JSON.stringify(started.body)}`);
    operationId = started.body.operation.id;
    return operationId;
  });
  const operation = (await api.get(`/operations/${operationId}`)).body;
  const step = (name: string) => operation.steps.find((s: { name: string }) => s.name === name);
  const copyMs = Date.parse(step('cut over to the new server')?.startedAt) - Date.parse(step('build the new server and start copying')?.finishedAt);
  const check = new pg.Client({ connectionString: url.toString() });
  await check.connect();
  const [{ count, version }] = (await check.query<{ count: number; version: string }>("SELECT (SELECT count(*)::int FROM probe) AS count, current_setting('server_version') AS version")).rows;
  await check.end();
  const lost = Math.max(0, upgrade.commits - count);
  process.stderr.write(`${upgrade.from} → ${version}: ${upgrade.status} ${upgrade.error ?? ''} ${ms(upgrade.ms)}, ${upgrade.failures} failed, stall ${ms(upgrade.stallMs)}\n`);

  report = `## Major upgrade (blue/green) — \`npm run bench:upgrade-major\` (${new Date().toISOString()}, ${cpus().length} × ${cpus()[0]?.model}, node ${process.version})

PostgreSQL ${upgrade.from} → ${version} on starter-2048: database ${(Number(bytes) / 2 ** 20).toFixed(0)} MiB (pg_database_size; data directory
${(dataBytes / 2 ** 20).toFixed(0)} MiB), ${rows} rows of 1 kB loaded in ${(loadMs / 1000).toFixed(1)} s. A probe opens a new connection through the
database's URL (the gateway) and commits one INSERT every ${probeIntervalMs} ms from before the request to after the operation finished.
Load average (1 min) during the run: ${Math.min(...load).toFixed(1)}–${Math.max(...load).toFixed(1)} on ${cpus().length} cores (other engineers' runs share the machine).

| outcome | operation | initial copy and catch-up | clients held at the cutover (agent) | failed writes | longest stall (probe) | state transitions | acknowledged writes lost |
|---|---|---|---|---|---|---|---|
| ${upgrade.status}${upgrade.error ? ` (${upgrade.error})` : ''} | ${ms(upgrade.ms)} | ${ms(copyMs)} | ${operation.result?.heldMs ?? '?'} ms | ${upgrade.failures} | ${ms(upgrade.stallMs)} | ${upgrade.transitions} | ${lost} |`;
} finally {
  clearInterval(sampleLoad);
  await runtime.stop();
  await rm(dataDir, { recursive: true, force: true });
}
console.log(report);
