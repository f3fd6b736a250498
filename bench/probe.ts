import { setTimeout as sleep } from 'node:timers/promises';
import { StateMachine } from 'aws-local-stepfunctions';
import pg from 'pg';
import type { ApiClient } from '../test/helpers/api.ts';
import { percentile } from './timing.ts';

/**
 * What a client sees during a long operation (bench:plan-change, bench:upgrade): a probe that opens a new
 * connection through the database's stable endpoint and commits one INSERT every 50 ms, and the state
 * transitions of the operation's execution.
 */

export const probeIntervalMs = 50;
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
export function startProbe(connectionString: string): Probe {
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

export interface Change {
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

/**
 * Runs one change (`start` makes the request and answers the operation's id) while the probe writes through
 * `url`; what the probe saw, the operation's duration and its state transitions.
 */
export async function measureChange(api: ApiClient, url: string, from: string, to: string, start: () => Promise<string>): Promise<Change> {
  const probe = startProbe(url);
  await sleep(500);
  const startedAt = performance.now();
  const operation = await api.waitForOperation(await start(), 300_000);
  const end = performance.now();
  await sleep(500);
  const { commits, failures, errors } = await probe.stop();
  // The stall: the longest gap between committed writes around and inside [startedAt, end], cut at both ends.
  const times = [startedAt, ...commits.filter((t) => t > startedAt && t < end), end];
  const before = commits.filter((t) => t <= startedAt).at(-1);
  const after = commits.find((t) => t >= end);
  if (before !== undefined) times[0] = before;
  if (after !== undefined) times[times.length - 1] = after;
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  return { from, to, status: operation.status, error: operation.error, ms: end - startedAt, failures, stallMs: Math.max(...gaps), commits: commits.length, transitions: transitions.get(operation.id) ?? 0, errors };
}

/** POSTs a request that starts an operation and waits until it succeeded; the response body. */
export async function succeeded(api: ApiClient, path: string, body: unknown): Promise<any> {
  const started = await api.post(path, body);
  if (started.status !== 202) throw new Error(`POST ${path}: ${started.status} ${JSON.stringify(started.body)}`);
  const operation = await api.waitForOperation(started.body.operation.id, 300_000);
  if (operation.status !== 'succeeded') throw new Error(`POST ${path}: ${operation.status} ${operation.error}`);
  return started.body;
}

export const ms = (value: number) => `${Math.round(value)} ms`;
export const summary = (values: number[], format: (v: number) => string) => {
  const sorted = [...values].sort((a, b) => a - b);
  return `${format(percentile(sorted, 50))} / ${format(sorted.at(-1)!)}`;
};

