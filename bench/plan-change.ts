import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { startRuntime } from '../local/runtime.ts';
import { apiClient, newTenant } from '../test/helpers/api.ts';
import { type Change, measureChange, ms, probeIntervalMs, succeeded, summary } from './probe.ts';

/**
 * `npm run bench:plan-change`: plan changes through the API (POST /databases/{id}/plan, when: now, until
 * the operation succeeded) while a probe, through the database's stable endpoint (its URL), opens a new
 * connection and commits one INSERT every 50 ms. Per change: failed writes, the longest stall (the longest
 * time without a committed write, from the request to the operation's end) and the state transitions of its
 * execution. BENCH_RUNS changes (default 10) per pair, business-1024 ↔ business-2048 and starter-512 ↔
 * starter-1024, each from the database's current plan to the other one. The state machines run with their
 * real waits (no fastWaits), as deployed.
 */

const runs = Number(process.env.BENCH_RUNS ?? 10);
const dataDir = await mkdtemp(join(tmpdir(), 'dbplane-bench-plan-'));
const runtime = await startRuntime({ dataDir, port: 0 });
const results: { pair: string; plans: string[]; changes: Change[]; lost: number }[] = [];
try {
  const admin = apiClient(runtime.apiUrl, runtime.adminToken);
  const { api } = await newTenant(admin, runtime.apiUrl, 'bench');
  const pairs = [
    { name: 'business', setup: ['business-1024'], plans: ['business-1024', 'business-2048'] },
    { name: 'starter', setup: ['starter-512'], plans: ['starter-512', 'starter-1024'] },
  ];
  for (const pair of pairs) {
    const created = await succeeded(api, '/databases', { name: `probe-${pair.name}`, engine: 'postgresql', plan: pair.setup[0] });
    const id: string = created.database.id;
    for (const plan of pair.setup.slice(1)) await succeeded(api, `/databases/${id}/plan`, { plan, when: 'now' });
    const url = new URL((await api.get(`/databases/${id}`)).body.url);
    url.password = created.password;
    const client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
    await client.query('CREATE TABLE probe (id bigserial PRIMARY KEY, at timestamptz NOT NULL)');
    await client.end();

    const changes: Change[] = [];
    for (let i = 0; i < runs; i++) {
      // From wherever the last change left it (a rolled-back change leaves it on its previous plan).
      const from: string = (await api.get(`/databases/${id}`)).body.plan;
      const to = from === pair.plans[0] ? pair.plans[1] : pair.plans[0];
      const change = await measureChange(api, url.toString(), from, to, async () => {
        const started = await api.post(`/databases/${id}/plan`, { plan: to, when: 'now' });
        if (started.status !== 202) throw new Error(`plan change ${from} → ${to}: ${started.status} ${JSON.stringify(started.body)}`);
        return started.body.operation.id;
      });
      changes.push(change);
      process.stderr.write(`${pair.name} ${from} → ${to}: ${change.status}${change.error ? ` (${change.error})` : ''} ${ms(change.ms)}, ${change.failures} failed, stall ${ms(change.stallMs)}, ${change.transitions} transitions${change.errors.length ? ` (${[...new Set(change.errors)].join('; ')})` : ''}\n`);
    }
    // Every acknowledged write is still there (a write whose reply was lost may be there too, uncounted).
    const check = new pg.Client({ connectionString: url.toString() });
    await check.connect();
    const { rows: [{ count }] } = await check.query<{ count: number }>('SELECT count(*)::int AS count FROM probe');
    await check.end();
    results.push({ pair: pair.name, plans: pair.plans, changes, lost: Math.max(0, changes.reduce((sum, c) => sum + c.commits, 0) - count) });
  }
} finally {
  await runtime.stop();
  await rm(dataDir, { recursive: true, force: true });
}

// One row per pair and outcome: a rolled-back change (restarts twice) is not mixed with the changes that went through.
const rows = results.flatMap(({ pair, plans, changes, lost }) => {
  return [...new Set(changes.map((c) => c.status))].map((status) => {
    const ended = changes.filter((c) => c.status === status);
    return `| ${pair} → ${pair} (${plans.join(' ↔ ')}) | ${status} | ${ended.length} / ${changes.length} | ${summary(ended.map((c) => c.ms), ms)} | ${summary(ended.map((c) => c.failures), String)} | ${summary(ended.map((c) => c.stallMs), ms)} | ${summary(ended.map((c) => c.transitions), String)} | ${lost} |`;
  });
});
console.log(`## Plan changes — \`npm run bench:plan-change\` (${new Date().toISOString()}, ${cpus().length} × ${cpus()[0]?.model}, node ${process.version})

A probe opens a new connection through the database's URL (the gateway) and commits one INSERT every ${probeIntervalMs} ms
during each change (POST /databases/{id}/plan, when: now → operation finished), from the database's current plan
to the other one (a rolled-back change leaves it where it was).
Stall: the longest time without a committed write over the change. Transitions: states entered plus retries in
the ChangePlan execution (aws-local-stepfunctions' event log), real waits. Values are p50 / max.

| change | outcome | runs | operation | failed writes | longest stall | state transitions | acknowledged writes lost (pair) |
|---|---|---|---|---|---|---|---|
${rows.join('\n')}`);
const unsuccessful = [...new Set(results.flatMap(({ changes }) => changes.filter((c) => c.status !== 'succeeded').map((c) => `${c.from} → ${c.to}: ${c.status}, ${c.error}`)))];
if (unsuccessful.length > 0) console.log(`\nWhy changes did not succeed:\n${unsuccessful.map((line) => `- ${line}`).join('\n')}`);
