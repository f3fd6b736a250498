import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { startRuntime } from '../local/runtime.ts';
import { apiClient, newTenant } from '../test/helpers/api.ts';
import { type Change, measureChange, ms, probeIntervalMs, succeeded, summary } from './probe.ts';

/**
 * `npm run bench:upgrade`: minor upgrades (16.13 → 16.14, both installed here) through the API on one node
 * (starter-512, a restart in place) and two nodes (business-1024, rolling: replica, switchover, old primary)
 * while the probe writes through the database's URL. BENCH_RUNS (default 5) fresh databases per plan, each
 * upgraded once; failed writes, longest stall, duration and state transitions per upgrade, and acknowledged
 * writes lost. Major upgrades: bench/upgrade-major.ts.
 */

const runs = Number(process.env.BENCH_RUNS ?? 5);
const [from, to] = ['16.13', '16.14'];
const dataDir = await mkdtemp(join(tmpdir(), 'dbplane-bench-upgrade-'));
const runtime = await startRuntime({ dataDir, port: 0 });
const results: { plan: string; upgrades: Change[]; lost: number }[] = [];
try {
  const { api } = await newTenant(apiClient(runtime.apiUrl, runtime.adminToken), runtime.apiUrl, 'bench');
  for (const plan of ['starter-512', 'business-1024']) {
    const upgrades: Change[] = [];
    let lost = 0;
    for (let i = 0; i < runs; i++) {
      const created = await succeeded(api, '/databases', { name: `upgrade-${plan}-${i}`, engine: 'postgresql', plan, version: from });
      const id: string = created.database.id;
      const url = new URL((await api.get(`/databases/${id}`)).body.url);
      url.password = created.password;
      const query = async (sql: string) => {
        const client = new pg.Client({ connectionString: url.toString() });
        await client.connect();
        try {
          return (await client.query(sql)).rows;
        } finally {
          await client.end();
        }
      };
      await query('CREATE TABLE probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL)');
      const upgrade = await measureChange(api, url.toString(), from, to, async () => {
        const started = await api.post(`/databases/${id}/upgrade`, { version: to });
        if (started.status !== 202) throw new Error(`upgrade ${from} → ${to}: ${started.status} ${JSON.stringify(started.body)}`);
        return started.body.operation.id;
      });
      upgrades.push(upgrade);
      const [{ count }] = await query('SELECT count(*)::int AS count FROM probe');
      lost += Math.max(0, upgrade.commits - count);
      process.stderr.write(`${plan} ${from} → ${to}: ${upgrade.status} ${ms(upgrade.ms)}, ${upgrade.failures} failed, stall ${ms(upgrade.stallMs)}, ${upgrade.transitions} transitions\n`);
      // One database at a time on the host: the next run measures its own upgrade, not a neighbour's load.
      // The upgrade's fresh base backup holds the database's lock for a moment (409 until it ends).
      let deleted = await api.delete(`/databases/${id}`);
      for (let attempt = 0; deleted.status === 409 && attempt < 120; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        deleted = await api.delete(`/databases/${id}`);
      }
      await api.waitForOperation(deleted.body.operation.id);
    }
    results.push({ plan, upgrades, lost });
  }
} finally {
  await runtime.stop();
  await rm(dataDir, { recursive: true, force: true });
}

const rows = results.map(({ plan, upgrades, lost }) => {
  const ok = upgrades.filter((u) => u.status === 'succeeded');
  return `| ${plan} | ${ok.length} / ${upgrades.length} succeeded | ${summary(ok.map((u) => u.ms), ms)} | ${summary(ok.map((u) => u.failures), String)} | ${summary(ok.map((u) => u.stallMs), ms)} | ${summary(ok.map((u) => u.transitions), String)} | ${lost} |`;
});
console.log(`## Minor upgrades — \`npm run bench:upgrade\` (${new Date().toISOString()}, ${cpus().length} × ${cpus()[0]?.model}, node ${process.version})

PostgreSQL ${from} → ${to}; a probe opens a new connection through the database's URL (the gateway) and commits one
INSERT every ${probeIntervalMs} ms during each upgrade (POST /databases/{id}/upgrade → operation finished), a fresh
database per run. Values are p50 / max.

| plan | outcome | operation | failed writes | longest stall | state transitions | acknowledged writes lost |
|---|---|---|---|---|---|---|
${rows.join('\n')}`);
