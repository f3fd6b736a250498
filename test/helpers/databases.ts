import pg from 'pg';
import { expect } from 'vitest';
import { newDatabase } from '../../functions/core/databases.ts';
import type { MaintenanceWindow } from '../../functions/core/maintenance-window.ts';
import type { Database } from '../../functions/core/model.ts';
import type { Store } from '../../functions/core/store.ts';
import type { ApiClient } from './api.ts';

/** Connects to a database's URL (as the API shows it, without password) with its password. */
export async function connect(url: string, password: string): Promise<pg.Client> {
  const parsed = new URL(url);
  parsed.password = password;
  const client = new pg.Client({ connectionString: parsed.toString() });
  await client.connect();
  return client;
}

/** Runs `fn` on a fresh connection to the database, closed afterwards. */
export async function withConnection<T>(url: string, password: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connect(url, password);
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Each user table's row count and the md5 of its rows in a stable order: equal before and after means no row lost or changed. */
export async function userTablesChecksum(client: pg.Client): Promise<Record<string, string>> {
  const { rows: tables } = await client.query<{ name: string }>(`
    SELECT format('%I.%I', table_schema, table_name) AS name FROM information_schema.tables
    WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`);
  const checksums: Record<string, string> = {};
  for (const { name } of tables) {
    const { rows: [row] } = await client.query<{ rows: number; md5: string }>(
      `SELECT count(*)::int AS rows, md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) AS md5 FROM ${name} t`,
    );
    checksums[name] = `${row.rows} rows, md5 ${row.md5}`;
  }
  return checksums;
}

/** A running database record with no server behind it, written straight to the table: enough where only records are under test. */
export async function runningRecord(store: Store, accountId: string, name: string, window: MaintenanceWindow): Promise<Database> {
  const at = new Date().toISOString();
  const { database, operation } = newDatabase({ accountId, scopes: ['databases'] }, { name, engine: 'postgresql', plan: 'starter-512' }, '16.13', at, 'provision', {});
  await store.createDatabase({ ...database, maintenanceWindow: window }, operation);
  await store.finishOperation(operation, { status: 'succeeded', at }, { status: 'running' });
  return (await store.getDatabase(database.id))!;
}

/** Creates a database and waits until it runs. */
export async function createRunning(api: ApiClient, name: string, plan = 'starter-512', version?: string) {
  const created = await api.post('/databases', { name, engine: 'postgresql', plan, ...(version ? { version } : {}) });
  expect(created.status, JSON.stringify(created.body)).toBe(202);
  const operation = await api.waitForOperation(created.body.operation.id);
  expect(operation.status, operation.error).toBe('succeeded');
  const database = await api.get(`/databases/${created.body.database.id}`);
  return { id: created.body.database.id as string, password: created.body.password as string, database: database.body, operation };
}
