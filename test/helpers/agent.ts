import pg from 'pg';
import type { EnsureInstance, HostInfo } from '#core/agent-api.ts';
import { scramVerifier } from '#core/scram.ts';
import { setTimeout as sleep } from 'node:timers/promises';

/** Calls the agent API of the agent `current()` names, with its bearer secret (or another token). */
export function agentCaller(current: () => { url: string }, secret: string) {
  return async (method: string, path: string, body?: unknown, token = secret): Promise<{ status: number; contentType: string | null; body: any }> => {
    const response = await fetch(`${current().url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await response.text();
    return { status: response.status, contentType: response.headers.get('content-type'), body: text ? JSON.parse(text) : undefined };
  };
}

/** Polls until `check` returns a value (not undefined), failing with the last error after the deadline. */
export async function eventually<T>(check: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(100);
  }
  throw new Error(`condition not met within ${timeoutMs} ms${lastError ? `: ${(lastError as Error).message}` : ''}`);
}

/** The usual test instance: PostgreSQL 17 of the host, role and database `app`, small settings. */
export function appInstanceSpec(host: HostInfo, password: string, extra: Partial<EnsureInstance> = {}): EnsureInstance {
  return {
    engine: 'postgresql',
    version: host.versions.find((v) => v.version.startsWith('17.'))!.version,
    role: { name: 'app', scramVerifier: scramVerifier(password) },
    database: 'app',
    settings: { shared_buffers: '32MB', max_connections: '20' },
    ...extra,
  };
}

/** Runs one query as the `app` role on a server or gateway port, on a connection of its own. */
export async function appQuery<T extends pg.QueryResultRow>(port: number, password: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'app', password, database: 'app', connectionTimeoutMillis: 15_000 });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}
