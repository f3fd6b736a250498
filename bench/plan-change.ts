import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StateMachine } from 'aws-local-stepfunctions';
import pg from 'pg';
import { startRuntime } from '../local/runtime.ts';
import { apiClient, newTenant, type ApiClient } from '../test/helpers/api.ts';
import { percentile } from './timing.ts';

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
const probeIntervalMs = 50;
/** A write that has not committed after this long counts as failed (the gateway may hold a connection meanwhile). */
const attemptTimeoutMs = 10_000;

/**
 * State transitions per execution, as Step Functions bills them: every state entered, plus every retry of a
 * state. The runtime runs in this process, so every execution's event log (aws-local-stepfunctions) is read here.
 */
const transitions = new Map<string, number>();
const run = StateMachine.prototype.run;
StateMachine.prototype.run = function (input, options) {
  const execution = run.call(this, input, options);
  const name = options?.context?.Execution?.Name;
  if (typeof name === 'string') {
    void (async () => {
      for await (const event of execution.eventLogs) {
        if (event.type === 'StateEntered' || event.type === 'StateRetried') transitions.set(name, (transitions.get(name) ?? 0) + 1);
      }
    })();
  }
  return execution;
};

interface Probe {
  /** Ends the probe; the times of every committed write and the number of failed attempts. */
  stop(): Promise<{ commits: number[]; failures: number; errors: string[] }>;
}

/** One new connection per write, as a client that reconnects would: it measures what a new client sees. */
function startProbe(connectionString: string): Probe {
  const commits: number[] = [];
  const errors: string[] = [];
  let failures = 0;
  let running = true;
  const loop = (async () => {
    for (let next = performance.now(); running; next += probeIntervalMs) {
      await sleep(Math.max(0, next - performance.now()));
      if (!running) break;
      const client = new pg.Client({ connectionString, connectionTimeoutMillis: attemptTimeoutMs, query_timeout: attemptTimeoutMs });
      client.on('error', () => undefined);
      try {
        await client.connect();
        await client.query('INSERT INTO probe (at) VALUES (now())');
        commits.push(performance.now());
      } catch (error) {
        failures++;
        errors.push((error as Error).message);
      } finally {
        await client.end().catch(() => undefined);
      }
      // A slow attempt is not followed by a burst of catch-up writes.
      next = Math.max(next, performance.now() - probeIntervalMs);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { commits, failures, errors };
    },
  };
}

interface Change {
  from: string;
  to: string;
  /** The operation's end: a change that did not succeed is reported, not retried. */
  status: string;
  error?: string;
  ms: number;
  failures: number;
  stallMs: number;
  /** Writes committed while the probe ran (around the change too). */
  commits: number;
  transitions: number;
  errors: string[];
}

async function changePlan(api: ApiClient, id: string, from: string, to: string, url: string): Promise<Change> {
  const probe = startProbe(url);
  await sleep(500);
  const start = performance.now();
  const started = await api.post(`/databases/${id}/plan`, { plan: to, when: 'now' });
  if (started.status !== 202) throw new Error(`plan change ${from} → ${to}: ${started.status} ${JSON.stringify(started.body)}`);
  const operation = await api.waitForOperation(started.body.operation.id, 300_000);
  const end = performance.now();
  await sleep(500);
  const { commits, failures, errors } = await probe.stop();
  // The stall: the longest gap between committed writes around and inside [start, end], cut at both ends.
  const times = [start, ...commits.filter((t) => t > start && t < end), end];
  const before = commits.filter((t) => t <= start).at(-1);
  const after = commits.find((t) => t >= end);
  if (before !== undefined) times[0] = before;
  if (after !== undefined) times[times.length - 1] = after;
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  return { from, to, status: operation.status, error: operation.error, ms: end - start, failures, stallMs: Math.max(...gaps), commits: commits.length, transitions: transitions.get(operation.id) ?? 0, errors };
}

/** POSTs a request that starts an operation and waits until it succeeded; the response body. */
async function succeeded(api: ApiClient, path: string, body: unknown): Promise<any> {
  const started = await api.post(path, body);
  if (started.status !== 202) throw new Error(`POST ${path}: ${started.status} ${JSON.stringify(started.body)}`);
  const operation = await api.waitForOperation(started.body.operation.id, 300_000);
  if (operation.status !== 'succeeded') throw new Error(`POST ${path}: ${operation.status} ${operation.error}`);
  return started.body;
}

const ms = (value: number) => `${Math.round(value)} ms`;
const summary = (values: number[], format: (v: number) => string) => {
  const sorted = [...values].sort((a, b) => a - b);
  return `${format(percentile(sorted, 50))} / ${format(sorted.at(-1)!)}`;
};

const dataDir = await mkdtemp(join(tmpdir(), 'dbplane-bench-plan-'));
const runtime = await startRuntime({ dataDir, port: 0 });
const results: { pair: string; plans: string[]; changes: Change[]; lost: number }[] = [];
try {
  const admin = apiClient(runtime.apiUrl, runtime.adminToken);
  const { api } = await newTenant(admin, runtime.apiUrl, 'bench');
  // A business database gets its replica from a plan change (Provision makes one node): start both on starter plans.
  const pairs = [
    { name: 'business', setup: ['starter-1024', 'business-1024'], plans: ['business-1024', 'business-2048'] },
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
      const change = await changePlan(api, id, from, to, url.toString());
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
