import { spawn, type ChildProcess } from 'node:child_process';
import { chown, mkdir, readFile, appendFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import type { PostgresSettings } from '#core/catalog.ts';
import { quoteSetting, type RunAs } from './postgres.ts';

/** The role a replica streams as, and the physical slot that keeps WAL on the primary until the replica has it. */
export const replicationRole = 'dbplane_replication';
export const replicationSlot = 'dbplane_replica';
const hbaLine = `host replication ${replicationRole} 127.0.0.1/32 scram-sha-256`;

/** What a base backup leaves out (as pg_basebackup does): transient folders' contents, the pid file, the agent's config. */
const emptiedDirs = ['pg_wal', 'pg_replslot', 'pg_dynshmem', 'pg_notify', 'pg_serial', 'pg_snapshots', 'pg_stat_tmp', 'pg_subtrans'];
const excluded = [
  ...emptiedDirs.map((d) => `--exclude=./${d}/*`),
  '--exclude=./postmaster.pid', '--exclude=./postmaster.opts', '--exclude=./backup_label', '--exclude=./tablespace_map',
  '--exclude=./dbplane.conf', '--exclude=./recovery.signal', '--exclude=./standby.signal',
];

/**
 * On the primary (an admin session): the replication role with `password` (stored as a SCRAM verifier),
 * its pg_hba line (reloaded), and the slot, reserving WAL from now on, so everything the copy needs stays.
 */
export async function prepareReplication(client: pg.Client, primaryData: string, password: string): Promise<void> {
  const exists = (await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [replicationRole])).rowCount;
  await client.query(`${exists ? 'ALTER' : 'CREATE'} ROLE ${replicationRole} REPLICATION LOGIN PASSWORD ${client.escapeLiteral(password)}`);
  const hba = join(primaryData, 'pg_hba.conf');
  if (!(await readFile(hba, 'utf8')).split('\n').includes(hbaLine)) {
    await appendFile(hba, `${hbaLine}\n`);
    await client.query('SELECT pg_reload_conf()');
  }
  await client.query(
    'SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)',
    [replicationSlot]);
}

/** Drops the slot once no walsender holds it any more (the replica was just stopped), and the role. */
export async function dropReplication(client: pg.Client): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const { rows } = await client.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [replicationSlot]);
    if (rows.length === 0) break;
    if (!rows[0]!.active) {
      await client.query('SELECT pg_drop_replication_slot($1)', [replicationSlot]);
      break;
    }
    if (Date.now() > deadline) throw new Error(`the replication slot ${replicationSlot} is still in use`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await client.query(`DROP ROLE IF EXISTS ${replicationRole}`);
}

/**
 * Copies the primary's data directory into `into` (which must exist, empty) with the low-level backup
 * API: pg_backup_start in the admin session, tar | tar of the data directory, pg_backup_stop without
 * waiting for archiving (the slot keeps the WAL; the replica streams it), then its backup_label.
 */
export async function copyPrimary(client: pg.Client, major: number, primaryData: string, into: string, runAs: RunAs | undefined): Promise<void> {
  await client.query(major >= 15 ? 'SELECT pg_backup_start($1, true)' : 'SELECT pg_start_backup($1, true, false)', ['dbplane replica']);
  // 1 MiB records rather than tar's 10 KiB: `tar -c | cat | tar -x` of 1.2 GB took 1.0 s instead of 1.9–2.5 s here.
  const reader = spawn('tar', ['-c', '-b', '2048', '-f', '-', '-C', primaryData, ...excluded, '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const writer = spawn('tar', ['-x', '-b', '2048', '-f', '-', '-C', into], { stdio: ['pipe', 'ignore', 'pipe'], ...(runAs ?? {}) });
  const results = await Promise.allSettled([
    pipeline(reader.stdout!, writer.stdin!),
    // 1: a file changed while read, which the WAL replayed from backup start repairs.
    exitOf(reader, 'tar -c', [0, 1]),
    exitOf(writer, 'tar -x', [0]),
  ]);
  // The tars' exits decide. tar -x exits once it has read the end-of-archive blocks, sometimes before tar -c has
  // written its last record's padding: the pipe then reports a premature close, though every file was extracted.
  // A copy cut short shows in an exit instead (tar -x: unexpected EOF; tar -c: a broken pipe).
  const failed = [results[1], results[2]].find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  const { rows: [stopped] } = await client.query<{ labelfile: string; spcmapfile: string | null }>(major >= 15
    ? 'SELECT labelfile, spcmapfile FROM pg_backup_stop(false)'
    : 'SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)');
  await writeOwned(join(into, 'backup_label'), stopped!.labelfile, runAs);
  if (stopped!.spcmapfile) await writeOwned(join(into, 'tablespace_map'), stopped!.spcmapfile, runAs);
  for (const dir of ['pg_wal/archive_status', 'pg_wal/summaries']) {
    await mkdir(join(into, dir), { recursive: true, mode: 0o700 });
    if (runAs) await chown(join(into, dir), runAs.uid, runAs.gid);
  }
}

/** Settings a hot standby must hold at least as high as its primary's, or it stops replaying. */
const standbyMinimums = ['max_connections', 'max_worker_processes', 'max_wal_senders', 'max_prepared_transactions', 'max_locks_per_transaction'];

/**
 * The target settings, raised where the primary runs higher values of those a standby must match: in a
 * rolling change to a smaller plan, the replica restarts first while the primary still runs the old ones.
 */
export function standbyServerSettings(target: PostgresSettings, primary: PostgresSettings = target): PostgresSettings {
  const settings = { ...target };
  for (const name of standbyMinimums) {
    if (primary[name] !== undefined && !(Number(target[name]) >= Number(primary[name]))) settings[name] = primary[name];
  }
  return settings;
}

/**
 * Whether `to` lowers a setting a standby must keep at least at its primary's. Such a standby can only
 * restart on it once it has replayed the primary's own change (PostgreSQL checks the values it last
 * replayed when it starts), so it restarts after the primary, not beside it.
 */
export function lowersStandbyMinimums(from: PostgresSettings, to: PostgresSettings): boolean {
  return standbyMinimums.some((name) => Number(to[name]) < Number(from[name]));
}

/**
 * The replica's own settings, written after the rest of its config, and the standby.signal that makes it one.
 * It reports what it replayed every second (not 10): the primary's view of its lag is what says it caught up.
 */
export function standbySettings(primaryPort: number, password: string): string[] {
  const conninfo = `host=127.0.0.1 port=${primaryPort} user=${replicationRole} password=${password} application_name=${replicationSlot}`;
  return [`primary_conninfo = ${quoteSetting(conninfo)}`, `primary_slot_name = ${quoteSetting(replicationSlot)}`, 'hot_standby = on', 'wal_receiver_status_interval = 1'];
}

export function writeStandbySignal(data: string, runAs: RunAs | undefined): Promise<void> {
  return writeOwned(join(data, 'standby.signal'), '', runAs);
}

/** Bytes of WAL the primary wrote that the replica has not replayed; undefined while it is not streaming. */
export async function replicaLag(client: pg.Client): Promise<number | undefined> {
  const { rows } = await client.query<{ lag: string | null }>(
    'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag FROM pg_stat_replication WHERE application_name = $1',
    [replicationSlot]);
  const lag = rows[0]?.lag;
  return lag === null || lag === undefined ? undefined : Math.max(0, Number(lag));
}

/** On the primary: waits until its replica has replayed everything written so far; false at the deadline. */
export async function replicaReplayedNow(client: pg.Client, timeoutMs: number): Promise<boolean> {
  const { rows: [now] } = await client.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const { rows } = await client.query<{ done: boolean }>(
      'SELECT replay_lsn >= $1::pg_lsn AS done FROM pg_stat_replication WHERE application_name = $2', [now!.lsn, replicationSlot]);
    if (rows[0]?.done) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

async function writeOwned(path: string, content: string, runAs: RunAs | undefined): Promise<void> {
  await writeFile(path, content, { mode: 0o600 });
  if (runAs) await chown(path, runAs.uid, runAs.gid);
}

function exitOf(child: ChildProcess, name: string, okCodes: number[]): Promise<void> {
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-500); });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (okCodes.includes(code ?? -1) ? resolve() : reject(new Error(`${name} exited with ${code}: ${stderr.trim()}`))));
  });
}
