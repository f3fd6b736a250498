/**
 * Building blocks of a major upgrade by blue/green through logical replication: a target server of the
 * newer major beside the running source, roles and schema copied, one subscription per user database
 * streaming the rows, and the cutover helpers (the caller holds the gateway). Each function is safe to
 * retry: it checks what is already there. The agent's admin role does everything over unix sockets,
 * the subscriptions included (pg_hba's `local all dbplane_admin trust`, see postgres.ts, also admits a
 * logical replication connection, which names a database): no password to create, store or rotate. So
 * source and target run on one host, as the same user (the target's server reaches the source's socket).
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { access } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import pg from 'pg';
import type { DatabaseProgress, TableStats } from '#core/agent-api.ts';
import type { PostgresSettings } from '#core/catalog.ts';
import { Conflict, Unprocessable } from '#core/errors.ts';
import { pgDumpFor, type PostgresInstall } from './host.ts';
import {
  adminRole, initCluster, makePrivateDir, spawnPostmaster, stopStalePostmaster, writeServerConfig, type RunAs, type ServerPaths,
} from './postgres.ts';

const execFileAsync = promisify(execFile);

/** A server the agent reaches as its admin: a HostedInstance (the source) or the target's own paths and port. */
export interface AdminEndpoint {
  port: number;
  paths: Pick<ServerPaths, 'socket'>;
}

/** The publication on the source and the subscription on the target, in every user database. */
export const upgradeName = 'dbplane_upgrade';
/** Slots live in the source's shared catalog: one per database, named after the database's oid there. */
const slotPrefix = `${upgradeName}_`;
const slotName = (databaseOid: number) => `${slotPrefix}${databaseOid}`;
/** The slots of our subscriptions, and those their table-sync workers make (pg_<suboid>_sync_<relid>_<sysid>). */
const ourSlots = `(slot_name LIKE '${slotPrefix}%' OR slot_name ~ '^pg_[0-9]+_sync_[0-9]+_[0-9]+$')`;

async function connect(server: AdminEndpoint, database: string): Promise<pg.Client> {
  const client = new pg.Client({ host: server.paths.socket, port: server.port, user: adminRole, database, connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

export async function withClient<T>(server: AdminEndpoint, database: string, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connect(server, database);
  try {
    return await use(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The customer's databases: `postgres` and the templates are the cluster's own (as in tables.ts). */
async function userDatabases(client: pg.Client): Promise<{ name: string; oid: number }[]> {
  const { rows } = await client.query<{ name: string; oid: number }>(`
    SELECT datname AS name, oid::int AS oid FROM pg_database
    WHERE NOT datistemplate AND datallowconn AND datconnlimit <> -2 AND datname <> 'postgres' ORDER BY datname`);
  return rows;
}

/**
 * On the source: wal_level = logical (through ALTER SYSTEM, which postgresql.auto.conf keeps across the
 * agent's rewrites of dbplane.conf; it takes effect at the next start, which the caller makes when
 * `restartNeeded`) and the publication of all tables in every user database. Refuses (409) when the
 * source has fewer free replication slots than databases to carry (the initial copy's table-sync workers
 * want up to two more each, and wait for a free one).
 */
export async function prepareSource(source: AdminEndpoint): Promise<{ databases: string[]; restartNeeded: boolean }> {
  const databases = await withClient(source, 'postgres', async (admin) => {
    const found = await userDatabases(admin);
    const { rows: [settings] } = await admin.query<{ level: string; free: number }>(`
      SELECT current_setting('wal_level') AS level,
        current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots WHERE NOT ${ourSlots})::int AS free`);
    if (settings!.free < found.length) {
      throw new Conflict(`the source has ${settings!.free} free replication slots for ${found.length} databases: raise max_replication_slots`);
    }
    if (settings!.level !== 'logical') await admin.query('ALTER SYSTEM SET wal_level = logical');
    return { names: found.map((d) => d.name), restartNeeded: settings!.level !== 'logical' };
  });
  for (const database of databases.names) {
    await withClient(source, database, async (client) => {
      const exists = (await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [upgradeName])).rowCount;
      if (!exists) await client.query(`CREATE PUBLICATION ${upgradeName} FOR ALL TABLES`);
    });
  }
  return { databases: databases.names, restartNeeded: databases.restartNeeded };
}

export interface TargetOptions {
  install: PostgresInstall;
  paths: ServerPaths;
  port: number;
  settings: PostgresSettings;
  runAs: RunAs | undefined;
}

/**
 * Initializes the target's cluster (unless a previous attempt did), writes its config and starts it;
 * resolves once it accepts connections. The caller owns (and stops) the process. Its stderr is read
 * here, so that a full pipe never blocks the server, and its tail explains a start that fails.
 */
export async function createTarget({ install, paths, port, settings, runAs }: TargetOptions): Promise<ChildProcess> {
  await makePrivateDir(dirname(paths.data), runAs);
  await makePrivateDir(paths.log, runAs);
  await makePrivateDir(paths.socket, runAs);
  await stopStalePostmaster(paths.data);
  if (!(await access(join(paths.data, 'PG_VERSION')).then(() => true, () => false))) await initCluster(install, paths, runAs);
  await writeServerConfig(paths, port, settings, runAs);
  const child = spawnPostmaster(install, paths, runAs);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-1000); });
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the target server exited: ${stderr.trim()}`);
    const ready = await connect({ port, paths }, 'postgres').then((c) => c.end().then(() => true), () => false);
    if (ready) return child;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the target server did not accept connections within 60 s: ${stderr.trim()}`);
    }
    await sleep(100);
  }
}

/**
 * Roles, then every user database with its schema, from the source to the target: pg_dumpall
 * --roles-only and pg_dump --schema-only of Debian's toolset, which must be at least as new as the
 * source (pg_dump refuses a newer server): a source newer than that is a 422, as the host's
 * capabilities say (host.ts). A database that already has its subscription is past this step and left
 * alone; one without it is made afresh, so a retry after a failure midway starts it clean.
 */
export async function copySchema(source: AdminEndpoint, target: AdminEndpoint, runAs: RunAs | undefined): Promise<void> {
  const { major, roles, databases } = await withClient(source, 'postgres', async (admin) => ({
    major: Math.floor(Number((await admin.query<{ v: string }>("SELECT current_setting('server_version_num') AS v")).rows[0]!.v) / 10000),
    databases: (await admin.query<{ name: string; owner: string; encoding: string; collate: string; ctype: string; acl: string[] | null }>(`
      SELECT datname AS name, pg_get_userbyid(datdba) AS owner, pg_encoding_to_char(encoding) AS encoding,
        datcollate AS collate, datctype AS ctype, datacl::text[] AS acl
      FROM pg_database WHERE datname = ANY($1) ORDER BY datname`, [(await userDatabases(admin)).map((d) => d.name)])).rows,
    roles: (await admin.query<{ name: string }>("SELECT rolname AS name FROM pg_roles WHERE rolname !~ '^pg_'")).rows,
  }));
  const pgDump = pgDumpFor(major);
  if (!pgDump) throw new Unprocessable(`no pg_dump as new as PostgreSQL ${major} on this host: a logical upgrade cannot copy its schema`);
  const dump = (binary: string, args: string[], database: string) => dumpSql(binary, args, source, database, runAs);

  const rolesScript = await dump(join(dirname(pgDump), 'pg_dumpall'), ['--roles-only'], 'postgres');
  await withClient(target, 'postgres', async (admin) => {
    // Created here when missing and their CREATE lines dropped from the script, which then only ALTERs
    // (attributes, SCRAM verifiers, settings) and GRANTs memberships: both can run again.
    for (const { name } of roles) {
      const exists = (await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [name])).rowCount;
      if (!exists) await admin.query(`CREATE ROLE ${admin.escapeIdentifier(name)}`);
    }
    await admin.query(rolesScript.split('\n').filter((line) => !line.startsWith('CREATE ROLE ')).join('\n'));

    for (const database of databases) {
      const name = admin.escapeIdentifier(database.name);
      const subscribed = (await admin.query(
        'SELECT 1 FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE d.datname = $1 AND s.subname = $2',
        [database.name, upgradeName])).rowCount;
      if (subscribed) continue;
      await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await admin.query(`CREATE DATABASE ${name} OWNER ${admin.escapeIdentifier(database.owner)} TEMPLATE template0 ENCODING ${admin.escapeLiteral(database.encoding)}
        LC_COLLATE ${admin.escapeLiteral(database.collate)} LC_CTYPE ${admin.escapeLiteral(database.ctype)}`);
      // pg_dump carries the database's own privileges only with --create, whose script reconnects (\connect): copied here instead.
      if (database.acl) {
        await admin.query(`REVOKE ALL ON DATABASE ${name} FROM PUBLIC`);
        for (const grant of database.acl.flatMap(parseAclItem)) {
          const grantee = grant.grantee === '' ? 'PUBLIC' : admin.escapeIdentifier(grant.grantee);
          await admin.query(`GRANT ${grant.privileges.join(', ')} ON DATABASE ${name} TO ${grantee}`);
        }
      }
      const schema = await dump(pgDump, ['--schema-only', '--no-publications', '--no-subscriptions'], database.name);
      // One simple query: one implicit transaction, so a failing statement leaves an empty database, not half a schema.
      await withClient(target, database.name, (client) => client.query(schema));
    }
  });
}

/** Database privileges of one aclitem (`grantee=CTc/grantor`; an empty grantee is PUBLIC). */
function parseAclItem(item: string): { grantee: string; privileges: string[] }[] {
  const match = /^("(?:[^"]|"")*"|[^=]*)=([A-Za-z*]*)\//.exec(item);
  if (!match) return [];
  const grantee = match[1]!.startsWith('"') ? match[1]!.slice(1, -1).replaceAll('""', '"') : match[1]!;
  const names: Record<string, string> = { C: 'CREATE', T: 'TEMPORARY', c: 'CONNECT' };
  const privileges = [...match[2]!].flatMap((letter) => names[letter] ?? []);
  return privileges.length > 0 ? [{ grantee, privileges }] : [];
}

/**
 * A plain-SQL dump as the admin over the source's socket (as the server's user when the agent is root,
 * like the backups' pg_dump). Dumps of current minors open and close with psql's \restrict meta-commands,
 * which the pg client would send to the server as SQL: dropped.
 */
async function dumpSql(binary: string, args: string[], source: AdminEndpoint, database: string, runAs: RunAs | undefined): Promise<string> {
  try {
    const { stdout } = await execFileAsync(binary, ['--no-password', ...args], {
      cwd: '/', maxBuffer: 256 * 1024 * 1024, ...(runAs ?? {}),
      env: { PATH: process.env.PATH, LC_ALL: 'C.UTF-8', PGHOST: source.paths.socket, PGPORT: String(source.port), PGUSER: adminRole, PGDATABASE: database },
    });
    return stdout.split('\n').filter((line) => !/^\\(un)?restrict /.test(line)).join('\n');
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new Error(`${binary} failed for database ${database}: ${stderr || (error as Error).message}`);
  }
}

/**
 * On the target, in every database copySchema made: the subscription to the source's publication, with
 * its own slot (slot names are per cluster, subscription names per database), copying the existing rows
 * first. A slot left on the source by a CREATE SUBSCRIPTION that failed after making it is dropped first.
 * Without `copyData` the target already has the rows (the cutover's reverse subscriptions, made while clients
 * are held): its slot starts at the source's current position.
 */
export async function subscribe(source: AdminEndpoint, target: AdminEndpoint, { copyData = true } = {}): Promise<void> {
  const databases = await withClient(source, 'postgres', userDatabases);
  for (const { name, oid } of databases) {
    const slot = slotName(oid);
    await withClient(target, name, async (client) => {
      const exists = (await client.query(
        'SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())',
        [upgradeName])).rowCount;
      if (exists) return;
      await withClient(source, 'postgres', async (admin) => {
        const { rows } = await admin.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [slot]);
        if (rows[0]?.active) throw new Conflict(`the source's slot ${slot} is in use, but the target has no subscription for it`);
        if (rows[0]) await admin.query('SELECT pg_drop_replication_slot($1)', [slot]);
      });
      const conninfo = [['host', source.paths.socket], ['port', String(source.port)], ['user', adminRole], ['dbname', name]]
        .map(([key, value]) => `${key}='${value!.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`).join(' ');
      // synchronous_commit on: with the default (off) the target confirms a commit only once its WAL writer has flushed it,
      // which made drain wait ~300 ms instead of ~20 ms here; the apply worker's commits cost a flush each instead.
      await client.query(`CREATE SUBSCRIPTION ${upgradeName} CONNECTION ${client.escapeLiteral(conninfo)} PUBLICATION ${upgradeName}
        WITH (copy_data = ${copyData}, synchronous_commit = 'on', slot_name = ${client.escapeLiteral(slot)})`);
    });
  }
}

export async function replicationProgress(source: AdminEndpoint, target: AdminEndpoint): Promise<DatabaseProgress[]> {
  const { databases, lags } = await withClient(source, 'postgres', async (admin) => ({
    databases: await userDatabases(admin),
    lags: new Map((await admin.query<{ slot: string; lag: string | null }>(
      `SELECT slot_name AS slot, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint::text AS lag
       FROM pg_replication_slots WHERE slot_name LIKE '${slotPrefix}%'`)).rows.map((r) => [r.slot, r.lag])),
  }));
  const progress: DatabaseProgress[] = [];
  for (const { name, oid } of databases) {
    const tables = await withClient(target, name, async (client) => (await client.query<{ subscribed: boolean; total: number; ready: number; errors: number }>(`
      WITH sub AS (SELECT oid FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))
      SELECT EXISTS (SELECT FROM sub) AS subscribed, count(*)::int AS total, count(*) FILTER (WHERE srsubstate = 'r')::int AS ready,
        (SELECT coalesce(sum(apply_error_count + sync_error_count), 0)::int FROM pg_stat_subscription_stats WHERE subid IN (SELECT oid FROM sub)) AS errors
      FROM pg_subscription_rel WHERE srsubid IN (SELECT oid FROM sub)`, [upgradeName])).rows[0]!)
      // A database made on the source after copySchema is not on the target.
      .catch((error: unknown) => {
        if (error instanceof pg.DatabaseError && error.code === '3D000') return { subscribed: false, total: 0, ready: 0, errors: 0 };
        throw error;
      });
    const lag = lags.get(slotName(oid));
    progress.push({
      database: name, subscribed: tables.subscribed, tables: tables.total, tablesReady: tables.ready,
      initialCopyDone: tables.subscribed && tables.ready === tables.total, errors: tables.errors,
      ...(lag === undefined || lag === null ? {} : { lagBytes: Math.max(0, Number(lag)) }),
    });
  }
  return progress;
}

/**
 * Cutover, once the gateway holds new connections: ends the sessions still open on the source's user
 * databases, waiting until they are gone, so that nothing commits there after drain reads the source's
 * position. Sessions get `graceMs` to end by themselves, as in a smart shutdown (a client that connects per
 * request is gone by then, its write not cut off); then every one left is ended (open transactions roll
 * back). The admin's own sessions (the agent's) stay.
 */
export async function endSourceSessions(source: AdminEndpoint, { graceMs = 0, timeoutMs = 5_000 } = {}): Promise<number> {
  return withClient(source, 'postgres', async (admin) => {
    const databases = (await userDatabases(admin)).map((d) => d.name);
    const sessions = async () => (await admin.query<{ pid: number }>(`
      SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = ANY($1) AND usename <> $2`,
    [databases, adminRole])).rows.map((r) => r.pid);
    let pids = await sessions();
    for (const deadline = Date.now() + graceMs; pids.length > 0 && Date.now() < deadline; pids = await sessions()) await sleep(5);
    // Not in the WHERE above: the planner may call a function there before the filters that spare the admin's sessions.
    await admin.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid', [pids]);
    // Polled here: pg_terminate_backend's own wait checks every 100 ms, and the cutover is a stall for clients.
    for (const deadline = Date.now() + timeoutMs; ; await sleep(5)) {
      const { rows: [{ left }] } = await admin.query<{ left: number }>('SELECT count(*)::int AS left FROM pg_stat_activity WHERE pid = ANY($1)', [pids]);
      if (left === 0) return pids.length;
      if (Date.now() > deadline) throw new Error(`${left} sessions on the source did not end within ${timeoutMs} ms`);
    }
  });
}

/**
 * Cutover, once the gateway holds new connections and the sessions are ended: in every user database of the
 * source an admin session takes EXCLUSIVE locks on every user table (reads go on, writes wait) until the
 * returned function releases them, or the source stops. A client whose login reached the source just before
 * the gateway held new connections (not yet a session when they were ended) thus cannot commit there after
 * drain reads the source's position: its write waits, and fails when the source stops, rather than being lost.
 */
export async function fenceSource(source: AdminEndpoint): Promise<() => Promise<void>> {
  const sessions: pg.Client[] = [];
  const release = async () => {
    await Promise.all(sessions.map((client) => client.end().catch(() => undefined)));
  };
  try {
    for (const { name } of await withClient(source, 'postgres', userDatabases)) {
      const client = await connect(source, name);
      sessions.push(client);
      const tables = await userTables(client, ['r', 'p']);
      // An autovacuum worker's lock would make the fence wait for it (up to deadlock_timeout, 1 s, before it gives way).
      await client.query("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND datname = current_database()");
      await client.query('BEGIN');
      // format('%I') quoted the names: safe to put in the statement.
      if (tables.length > 0) await client.query(`LOCK TABLE ${tables.map((t) => t.quoted).join(', ')} IN EXCLUSIVE MODE`);
    }
  } catch (error) {
    await release();
    throw error;
  }
  return release;
}

/** The user tables of a database of these kinds, quoted; by default plain tables and partitions, not partitioned parents (each row once). */
async function userTables(client: pg.Client, kinds = ['r']): Promise<{ schema: string; name: string; quoted: string }[]> {
  return (await client.query<{ schema: string; name: string; quoted: string }>(`
    SELECT n.nspname AS schema, c.relname AS name, format('%I.%I', n.nspname, c.relname) AS quoted
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = ANY($1) AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' ORDER BY 1, 2`, [kinds])).rows;
}

/**
 * Before the cutover, VACUUM (with ANALYZE where asked) in every user database: the visibility map it sets lets
 * rowCounts count from the indexes while clients wait, instead of reading every table, and ANALYZE gives the
 * target's planner the statistics logical replication does not copy.
 */
export async function vacuum(server: AdminEndpoint, { analyze = false } = {}): Promise<void> {
  for (const { name } of await withClient(server, 'postgres', userDatabases)) {
    await withClient(server, name, (client) => client.query(analyze ? 'VACUUM (ANALYZE)' : 'VACUUM'));
  }
}

/** Every user table's row count, one query a database (the planner counts from an index where the visibility map allows). */
export async function rowCounts(server: AdminEndpoint): Promise<TableStats> {
  const tables: TableStats['tables'] = [];
  for (const { name: database } of await withClient(server, 'postgres', userDatabases)) {
    await withClient(server, database, async (client) => {
      const found = await userTables(client);
      if (found.length === 0) return;
      // format('%I') quoted the names: safe to put in the query.
      const { rows } = await client.query<{ i: number; rows: number }>(found.map((t, i) => `SELECT ${i} AS i, count(*)::float8 AS rows FROM ${t.quoted}`).join(' UNION ALL '));
      for (const { i, rows: count } of rows) tables.push({ database, schema: found[i]!.schema, name: found[i]!.name, rows: count });
    });
  }
  return { tables, totalRows: tables.reduce((sum, t) => sum + t.rows, 0) };
}

/**
 * A new cluster's WAL file names start again at 000000010000000000000001, and the database's WAL archive
 * already holds the source's files by such names. The target writes a small record and switches to a new
 * file until it writes past the source's current position, so that once it archives (after the cutover)
 * it never overwrites one of the source's files. A checkpoint every 32 files lets it recycle them. Returns
 * the number of files switched.
 */
export async function advanceWalPast(source: AdminEndpoint, target: AdminEndpoint): Promise<number> {
  const sourceLsn = await withClient(source, 'postgres', async (admin) =>
    (await admin.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0]!.lsn);
  return withClient(target, 'postgres', async (admin) => {
    for (let switched = 1; ; switched++) {
      const { rows: [{ behind }] } = await admin.query<{ behind: boolean }>('SELECT pg_current_wal_lsn() < $1::pg_lsn AS behind', [sourceLsn]);
      // Once more after passing it: the target then writes in a file after the source's current one.
      await admin.query("SELECT pg_logical_emit_message(false, 'dbplane', 'advance'), pg_switch_wal()");
      if (!behind) return switched;
      if (switched % 32 === 0) await admin.query('CHECKPOINT');
    }
  });
}

/**
 * Cutover: waits until every subscription has applied and flushed all the source has written so far
 * (each slot's confirmed_flush_lsn reaches the source's current position), polling every 10 ms up to
 * `timeoutMs`. Refuses (409) while a table's initial copy is still running: its rows are not all there.
 */
export async function drain(source: AdminEndpoint, target: AdminEndpoint, timeoutMs = 30_000): Promise<{ lsn: string; waitedMs: number }> {
  const started = Date.now();
  const progress = await replicationProgress(source, target);
  const unfinished = progress.filter((p) => !p.initialCopyDone).map((p) => p.database);
  if (unfinished.length > 0) throw new Conflict(`the initial copy is not done in ${unfinished.join(', ')}`);
  return withClient(source, 'postgres', async (admin) => {
    const slots = (await userDatabases(admin)).map((d) => slotName(d.oid));
    const { rows: [{ lsn }] } = await admin.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
    for (;;) {
      const { rows: [{ behind }] } = await admin.query<{ behind: number }>(`
        SELECT count(*)::int AS behind FROM unnest($1::text[]) AS wanted(slot)
        LEFT JOIN pg_replication_slots s ON s.slot_name = wanted.slot
        WHERE s.confirmed_flush_lsn IS NULL OR s.confirmed_flush_lsn < $2::pg_lsn`, [slots, lsn]);
      if (behind === 0) return { lsn, waitedMs: Date.now() - started };
      if (Date.now() - started > timeoutMs) throw new Error(`${behind} subscriptions did not confirm ${lsn} within ${timeoutMs} ms`);
      await sleep(10);
    }
  });
}

/**
 * Cutover: logical replication carries rows, not sequences. Each sequence of the target takes the
 * source's state (last_value and is_called, read from the sequence itself), in two queries a database.
 */
export async function syncSequences(source: AdminEndpoint, target: AdminEndpoint): Promise<number> {
  const databases = await withClient(source, 'postgres', userDatabases);
  let synced = 0;
  for (const { name } of databases) {
    const states = await withClient(source, name, async (client) => {
      const { rows: sequences } = await client.query<{ name: string }>("SELECT format('%I.%I', schemaname, sequencename) AS name FROM pg_sequences");
      if (sequences.length === 0) return [];
      // format('%I') quoted the names: safe to put in the query.
      return (await client.query<{ name: string; value: string; called: boolean }>(sequences
        .map((s, i) => `SELECT $${i + 1}::text AS name, last_value::text AS value, is_called AS called FROM ${s.name}`).join(' UNION ALL '),
      sequences.map((s) => s.name))).rows;
    });
    if (states.length === 0) continue;
    await withClient(target, name, (client) => client.query(
      'SELECT count(setval(n::regclass, v, c)) FROM unnest($1::text[], $2::bigint[], $3::bool[]) AS s(n, v, c)',
      [states.map((s) => s.name), states.map((s) => s.value), states.map((s) => s.called)]));
    synced += states.length;
  }
  return synced;
}

/**
 * After the cutover, on the target: each subscription is disabled, detached from its slot and dropped.
 * Detached, DROP SUBSCRIPTION does not reach for the source (which may be stopped or gone by now);
 * cleanupSource drops the slots there.
 */
export async function finishTarget(target: AdminEndpoint): Promise<void> {
  const databases = await withClient(target, 'postgres', async (admin) => (await admin.query<{ name: string }>(
    'SELECT d.datname AS name FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE s.subname = $1', [upgradeName])).rows);
  for (const { name } of databases) {
    await withClient(target, name, async (client) => {
      await client.query(`ALTER SUBSCRIPTION ${upgradeName} DISABLE`);
      await client.query(`ALTER SUBSCRIPTION ${upgradeName} SET (slot_name = NONE)`);
      await client.query(`DROP SUBSCRIPTION ${upgradeName}`);
    });
  }
}

/**
 * On the source: the publications and the slots, once no walsender holds them (the target's
 * subscriptions were disabled or it was stopped; waits up to `timeoutMs`). A slot left behind would keep
 * WAL on the source for ever. wal_level stays logical: lowering it needs a restart, and costs little.
 */
export async function cleanupSource(source: AdminEndpoint, timeoutMs = 30_000): Promise<void> {
  const databases = await withClient(source, 'postgres', async (admin) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { rows } = await admin.query<{ slot: string; active: boolean }>(`SELECT slot_name AS slot, active FROM pg_replication_slots WHERE ${ourSlots}`);
      if (rows.length === 0) break;
      for (const { slot } of rows.filter((r) => !r.active)) {
        // Dropped meanwhile (a table-sync worker cleaning up after itself) is fine.
        await admin.query('SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active', [slot]);
      }
      if (rows.every((r) => !r.active)) continue;
      if (Date.now() > deadline) throw new Conflict(`replication slots still in use on the source: ${rows.filter((r) => r.active).map((r) => r.slot).join(', ')}`);
      await sleep(100);
    }
    return userDatabases(admin);
  });
  for (const { name } of databases) {
    await withClient(source, name, (client) => client.query(`DROP PUBLICATION IF EXISTS ${upgradeName}`));
  }
}
