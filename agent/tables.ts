import pg from 'pg';
import type { TableStats } from '#core/agent-api.ts';
import { Conflict, NotFound, Unprocessable } from '#core/errors.ts';
import type { HostedInstance } from './backups/service.ts';
import { adminRole } from './postgres.ts';

/** The instance, which must be running: a 404 when it is not on this host, a 409 when it is not running. */
export function runningInstance(id: string, instance: HostedInstance | undefined): HostedInstance {
  if (!instance) throw new NotFound(`no instance ${id} on this host`);
  if (instance.status !== 'running') throw new Conflict(`instance ${id} is ${instance.status}, not running`);
  return instance;
}

/** A connection as the agent's admin role over the instance's unix socket. */
export async function connectAdmin(instance: HostedInstance, database: string): Promise<pg.Client> {
  const client = new pg.Client({ host: instance.paths.socket, port: instance.port, user: adminRole, database, connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/**
 * What a restore drill checks: every user table of every database of the instance (but `postgres` and
 * the templates), counted with a sequential scan, so every heap page is read and a damaged one fails
 * the count. A table that cannot be read is a 422 naming it; the count is not worth retrying.
 */
export async function tableStats(id: string, instance: HostedInstance | undefined): Promise<TableStats> {
  const running = runningInstance(id, instance);
  const connect = (database: string) => connectAdmin(running, database);

  const tables: TableStats['tables'] = [];
  const admin = await connect('postgres');
  let databases: string[];
  try {
    databases = (await admin.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn AND datname <> 'postgres' ORDER BY datname",
    )).rows.map((r) => r.datname);
  } finally {
    await admin.end().catch(() => undefined);
  }

  for (const database of databases) {
    const client = await connect(database);
    try {
      // An index-only scan answers count(*) from the index and the visibility map: the heap would go unread.
      await client.query('SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off');
      // Plain tables and partitions ('r'), not partitioned parents ('p'): each row is counted once.
      const { rows: found } = await client.query<{ schema: string; name: string }>(`
        SELECT n.nspname AS schema, c.relname AS name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
        ORDER BY 1, 2`);
      for (const { schema, name } of found) {
        const qualified = `${client.escapeIdentifier(schema)}.${client.escapeIdentifier(name)}`;
        let rows: number;
        try {
          ({ rows: [{ rows }] } = await client.query<{ rows: number }>(`SELECT count(*)::float8 AS rows FROM ${qualified}`));
        } catch (error) {
          if (!(error instanceof pg.DatabaseError)) throw error;
          throw new Unprocessable(`table ${qualified} in database ${database} could not be read: ${error.message}`, { cause: error });
        }
        tables.push({ database, schema, name, rows });
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  return { tables, totalRows: tables.reduce((sum, t) => sum + t.rows, 0) };
}
