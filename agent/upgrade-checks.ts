import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import {
  maxUpgradeCheckObjects, type UpgradeCheck, type UpgradeCheckId, type UpgradeChecks, type UpgradeMethod,
} from '#core/agent-api.ts';
import { majorOf } from '#core/catalog.ts';
import { Unprocessable } from '#core/errors.ts';
import type { HostedInstance } from './backups/service.ts';
import type { PostgresInstall } from './host.ts';
import { connectAdmin, runningInstance } from './tables.ts';

const all: UpgradeMethod[] = ['minor', 'logical', 'pg_upgrade'];

const checks: Record<UpgradeCheckId, Omit<UpgradeCheck, 'id' | 'count' | 'objects'>> = {
  tables_without_replica_identity: {
    severity: 'blocking', appliesTo: ['logical'],
    detail: 'tables without a primary key or a replica identity: logical replication cannot carry their UPDATE and DELETE. '
      + 'Add a primary key, or set REPLICA IDENTITY FULL (or USING INDEX on a unique index of NOT NULL columns).',
  },
  prepared_transactions: {
    severity: 'blocking', appliesTo: all,
    detail: 'prepared transactions are pending: end them with COMMIT PREPARED or ROLLBACK PREPARED first.',
  },
  invalid_databases: {
    severity: 'blocking', appliesTo: all,
    detail: 'databases that are invalid (an interrupted DROP DATABASE) or do not allow connections cannot be checked or carried: '
      + 'drop them, or allow connections.',
  },
  // Also for a minor: without its files in the target install, the extension breaks once the server restarts on it.
  unavailable_extensions: {
    severity: 'blocking', appliesTo: all,
    detail: 'extensions that the target version does not provide on this host: drop them first.',
  },
  reg_columns: {
    severity: 'blocking', appliesTo: ['pg_upgrade'],
    detail: 'stored columns of reg* types whose OIDs pg_upgrade does not preserve (regcollation, regconfig, regdictionary, '
      + 'regnamespace, regoper, regoperator, regproc, regprocedure, also inside arrays, domains, composites and ranges): '
      + 'drop them or change them to text.',
  },
  aclitem_columns: {
    severity: 'blocking', appliesTo: ['pg_upgrade'],
    detail: 'stored columns of type aclitem, whose on-disk format changed in PostgreSQL 16: drop them or change them to text.',
  },
  large_objects: {
    severity: 'blocking', appliesTo: ['logical'],
    detail: 'large objects (pg_largeobject): logical replication does not carry them. Store the data in bytea columns instead.',
  },
  unlogged_tables: {
    severity: 'warning', appliesTo: ['logical'],
    detail: 'unlogged tables: logical replication does not carry their rows, so they are empty after the upgrade.',
  },
  materialized_views: {
    severity: 'warning', appliesTo: ['logical'],
    detail: 'materialized views: logical replication does not carry their contents; '
      + 'they must be refreshed on the new server (REFRESH MATERIALIZED VIEW) before it serves them.',
  },
};

/** The reg* types pg_upgrade refuses in stored columns (src/bin/pg_upgrade/check.c): regclass, regrole and regtype keep their OIDs. */
const regTypes = ['regcollation', 'regconfig', 'regdictionary', 'regnamespace', 'regoper', 'regoperator', 'regproc', 'regprocedure'];

/** What one check found: up to maxUpgradeCheckObjects names, and how many there are in all. */
interface Found {
  objects: string[];
  count: number;
}

/**
 * The pre-upgrade checks of a running instance for a target version installed on this host: catalog
 * reads on the primary, in every database that accepts connections, as the admin role. Changes nothing.
 */
export async function upgradeChecks(
  id: string, instance: HostedInstance | undefined, version: string, installs: PostgresInstall[],
): Promise<UpgradeChecks> {
  const running = runningInstance(id, instance);
  const target = installs.find((i) => i.version === version);
  if (!target) throw new Unprocessable(`PostgreSQL ${version} is not installed on this host`);
  const available = await availableExtensions(target);
  // aclitem changed format in 16: only an upgrade from 15 or older across it is concerned.
  const aclitemChanged = majorOf(running.spec.version) <= 15 && majorOf(version) >= 16;

  const found = new Map<UpgradeCheckId, Found>();
  const add = (checkId: UpgradeCheckId, more: Found) => {
    const sum = found.get(checkId) ?? { objects: [], count: 0 };
    found.set(checkId, { objects: [...sum.objects, ...more.objects].slice(0, maxUpgradeCheckObjects), count: sum.count + more.count });
  };

  const admin = await connectAdmin(running, 'postgres');
  let databases: string[];
  try {
    add('prepared_transactions', await listed(admin, "SELECT format('%s: %s', database, gid) AS name FROM pg_prepared_xacts"));
    // pg_upgrade wants every database but template0 to accept connections; datconnlimit -2 marks an interrupted DROP DATABASE.
    add('invalid_databases', await listed(admin,
      "SELECT datname AS name FROM pg_database WHERE datname <> 'template0' AND (NOT datallowconn OR datconnlimit = -2)"));
    databases = (await admin.query<{ datname: string }>(
      'SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn AND datconnlimit <> -2 ORDER BY datname',
    )).rows.map((r) => r.datname);
  } finally {
    await admin.end().catch(() => undefined);
  }

  for (const database of databases) {
    const client = await connectAdmin(running, database).catch((error: unknown) => {
      // Dropped since it was listed: nothing left there to check.
      if (error instanceof pg.DatabaseError && error.code === '3D000') return undefined;
      throw error;
    });
    if (!client) continue;
    try {
      add('tables_without_replica_identity', await listed(client, `
        SELECT ${qualified} AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND ${userSchema}
          AND (c.relreplident = 'n'
            OR (c.relreplident = 'd' AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
            -- a dropped identity index leaves 'i' behind, which then acts as NOTHING
            OR (c.relreplident = 'i' AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)))`));
      const { rows: extensions } = await client.query<{ extname: string }>('SELECT extname FROM pg_extension ORDER BY extname');
      const missing = extensions.filter((e) => !available.has(e.extname)).map((e) => `${database}: ${e.extname}`);
      add('unavailable_extensions', { objects: missing.slice(0, maxUpgradeCheckObjects), count: missing.length });
      add('reg_columns', await columnsOfTypes(client, regTypes));
      if (aclitemChanged) add('aclitem_columns', await columnsOfTypes(client, ['aclitem']));
      const { rows: [{ count: largeObjects }] } = await client.query<{ count: number }>('SELECT count(*)::int AS count FROM pg_largeobject_metadata');
      if (largeObjects > 0) add('large_objects', { objects: [database], count: largeObjects });
      add('unlogged_tables', await listed(client,
        `SELECT ${qualified} AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND c.relpersistence = 'u' AND ${userSchema}`));
      add('materialized_views', await listed(client,
        `SELECT ${qualified} AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'm' AND ${userSchema}`));
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  return {
    checks: [...found].filter(([, f]) => f.count > 0).map(([checkId, f]) => ({ id: checkId, ...checks[checkId], ...f })),
  };
}

/** "database: schema.relation", each part quoted only when it needs to be (as PostgreSQL prints names). */
const qualified = "format('%s: %I.%I', current_database(), n.nspname, c.relname)";
/** Not the catalogs, and not temporary tables (theirs or other sessions'). */
const userSchema = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast_)?temp_'";

/** The `name` column of `sql`'s rows, the first maxUpgradeCheckObjects in order, and how many rows there are. */
async function listed(client: pg.Client, sql: string, params: unknown[] = []): Promise<Found> {
  const { rows } = await client.query<{ name: string; total: number }>(
    `SELECT name, (count(*) OVER ())::int AS total FROM (${sql}) found ORDER BY name LIMIT ${maxUpgradeCheckObjects}`, params);
  return { objects: rows.map((r) => r.name), count: rows[0]?.total ?? 0 };
}

/**
 * Stored columns (tables, materialized views, indexes; views store nothing) of the given pg_catalog types,
 * also wrapped in domains, arrays, composites or ranges: pg_upgrade's own query, as it runs it.
 */
function columnsOfTypes(client: pg.Client, types: string[]): Promise<Found> {
  return listed(client, `
    WITH RECURSIVE oids AS (
      SELECT t.oid FROM pg_type t WHERE t.typnamespace = 'pg_catalog'::regnamespace AND t.typname = ANY($1::text[])
      UNION ALL
      SELECT * FROM (
        WITH x AS (SELECT oid FROM oids)
        SELECT t.oid FROM pg_type t, x WHERE t.typbasetype = x.oid AND t.typtype = 'd'
        UNION ALL
        SELECT t.oid FROM pg_type t, x WHERE t.typelem = x.oid AND t.typtype = 'b'
        UNION ALL
        SELECT t.oid FROM pg_type t, pg_class c, pg_attribute a, x
        WHERE t.typtype = 'c' AND t.oid = c.reltype AND c.oid = a.attrelid AND NOT a.attisdropped AND a.atttypid = x.oid
        UNION ALL
        SELECT t.oid FROM pg_type t, pg_range r, x WHERE t.typtype = 'r' AND r.rngtypid = t.oid AND r.rngsubtype = x.oid
      ) wrapped
    )
    SELECT format('%s: %I.%I.%I', current_database(), n.nspname, c.relname, a.attname) AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid
    WHERE NOT a.attisdropped AND a.atttypid IN (SELECT oid FROM oids) AND c.relkind IN ('r', 'm', 'i') AND ${userSchema}`, [types]);
}

/**
 * The extensions the target install provides: one control file each in its share/extension folder,
 * which the embedded packages ship beside bin/ (where postgres looks for it, relative to itself).
 */
async function availableExtensions(install: PostgresInstall): Promise<Set<string>> {
  const dir = join(install.binDir, '..', 'share', 'postgresql', 'extension');
  const files = await readdir(dir);
  return new Set(files.filter((f) => f.endsWith('.control')).map((f) => f.slice(0, -'.control'.length)));
}
