import { execFileSync, spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { adminRole, resolveRunAs } from '../agent/postgres.ts';
import { agentNodeFlags } from '../agent/spawn.ts';
import { startRuntime } from '../local/runtime.ts';
import { apiClient, newTenant } from '../test/helpers/api.ts';
import { connect } from '../test/helpers/databases.ts';
import { median } from './timing.ts';

/**
 * `npm run bench:backups`: on this machine, in one run, with a database of BENCH_BACKUP_MB (default 1100) MB on
 * PostgreSQL 15 (so Debian's pg_dump 15 can dump it): rows of random hex that compress ~2:1 only, the worst case
 * (BENCH_DATA=hex, the default), or pgbench's tables (BENCH_DATA=pgbench, the data of the reference figures):
 *  1. backup (API call to a completed backup: encrypted, three copies) vs a raw tar of the data directory (pg_wal's segments left out, as a base backup does) to one file, fsynced;
 *  2. restore into a new database (API call to running) vs a raw physical restore: untar of a plain base
 *     backup (`pg_basebackup -Ft -X fetch`, Debian's PostgreSQL 15 toolset) and `pg_ctl start -w` on it
 *     (it replays the backup's WAL, then accepts connections); vs the same through the agent's unpacking pipeline
 *     (that base backup compressed with zstd -1, then `zstd -d | tar -x`: as item 3 compares backups); and vs a bare untar of the first tar;
 *  3. backup vs the same work done raw, one step after the other: the data directory's tar through zstd -1 to one
 *     file, then pg_dump -Fc -Z0 through zstd -1 to another (the agent's pipelines); vs the baseline before the agent
 *     piped its dump into zstd (a plain tar, then pg_dump -Fc -Z1); and, once, pg_dump -Fc at its default compression;
 *  4. AES-256-GCM chunked encryption alone, in memory, against the cipher alone (bench/encryption.ts, in a process of its own).
 * The runtime runs with the waits it deploys (no `fastWaits`): how soon the control plane sees a job
 * finish is part of what a customer waits for. Both restores run BENCH_RESTORE_ROUNDS (default 3) times,
 * and both backups BENCH_BACKUP_ROUNDS (default 3) times, alternated, each after a `sync`; the table shows
 * medians (the machine's speed moves by ±30 % from one minute to the next).
 */

const targetMb = Number(process.env.BENCH_BACKUP_MB ?? 1100);
const dataset = z.enum(['hex', 'pgbench']).parse(process.env.BENCH_DATA ?? 'hex');
const restoreRounds = Number(process.env.BENCH_RESTORE_ROUNDS ?? 3);
const backupRounds = Number(process.env.BENCH_BACKUP_ROUNDS ?? 3);
const pgBin = '/usr/lib/postgresql/15/bin';

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const all = (values: number[]) => values.map((ms) => (ms / 1000).toFixed(1)).join(', ') + ' s';
const rate = (bytes: number, ms: number) => `${(bytes / 1e6 / (ms / 1000)).toFixed(0)} MB/s`;
async function timed<T>(fn: () => Promise<T> | T): Promise<[T, number]> {
  const start = performance.now();
  const value = await fn();
  return [value, performance.now() - start];
}
function duBytes(path: string): number {
  return Number(execFileSync('du', ['-sb', path]).toString().split('\t')[0]);
}

const dataDir = mkdtempSync(join(tmpdir(), 'dbplane-bench-backups-'));
const scratch = mkdtempSync(join(tmpdir(), 'dbplane-bench-raw-'));
const runtime = await startRuntime({ dataDir, port: 0 });
/** Like the agent, a root bench runs PostgreSQL (and the untar of its files) as the servers' user. */
const runAs = await resolveRunAs();
function run(command: string, args: string[], options: { uid?: number; gid?: number } = runAs ?? {}): void {
  const result = spawnSync(command, args, { ...options, stdio: 'pipe' });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${result.stderr}`);
}
const lines: string[] = [];
try {
  const admin = apiClient(runtime.apiUrl, runtime.adminToken);
  const { api } = await newTenant(admin, runtime.apiUrl, 'bench');
  const created = await api.post('/databases', { name: 'big', engine: 'postgresql', version: '15', plan: 'starter-2048' });
  if ((await api.waitForOperation(created.body.operation.id)).status !== 'succeeded') throw new Error('provisioning failed');
  const database = (await api.get('/databases/big')).body;

  const client = await connect(database.url, created.body.password);
  // A server stopping under an idle connection must not crash the bench before it cleans up.
  client.on('error', () => undefined);
  const dbUrl = new URL(database.url);
  dbUrl.password = created.body.password;
  let loaded: string;
  const [, loadMs] = await timed(async () => {
    if (dataset === 'pgbench') {
      // pgbench's tables (~15 MB per unit of scale), generated by the server itself: the data the figures are for.
      const scale = Math.max(1, Math.round(targetMb / 15));
      run(join(pgBin, 'pgbench'), ['-i', '-q', '-s', String(scale), '-I', 'dtGp', dbUrl.toString()], {});
      loaded = `pgbench -i -s ${scale}`;
      return;
    }
    // ~1 kB of random hex per row: it compresses ~2:1 only, like real data at worst.
    const rows = Math.ceil((targetMb * 1e6) / 1100);
    await client.query('create table blobs (id bigint primary key, body text)');
    for (let done = 0; done < rows; done += 100_000) {
      // The aggregate must see the inner series (s), or PostgreSQL would attach it to the outer query.
      await client.query(`insert into blobs select g, x.body from generate_series($1::bigint, $2::bigint) g,
        lateral (select string_agg(md5(random()::text || s::text || g::text), '') as body from generate_series(1, 32) s) x`, [done + 1, Math.min(rows, done + 100_000)]);
    }
    loaded = `${rows} rows of ~1 kB random hex`;
  });
  // At rest before anything is measured: the freshly loaded table vacuumed now, not by autovacuum during one of the
  // backups below (a run saw ~130 MB of its WAL inside dbplane's backup, replayed by that restore alone: 6 s of 12).
  await client.query('vacuum (analyze)');
  // The server's own port (the database URL names its gateway): its socket is where the agent keeps it.
  const { rows: [{ port: serverPort }] } = await client.query<{ port: string }>('SHOW port');
  await client.end();
  run(join(pgBin, 'psql'), ['-h', join(dataDir, 'agent', 'sockets', serverPort), '-p', serverPort, '-U', adminRole, '-d', 'postgres', '-c', 'CHECKPOINT'], {});
  const instanceData = join(dataDir, 'agent', 'instances', database.id, 'data');
  // pg_wal's segments (~1 GB of them recycled after the load) are left out of every tar, raw or not: a base
  // backup carries only the WAL it needs (pg_basebackup does the same), and counting them flattered the raw tar.
  const walBytes = duBytes(join(instanceData, 'pg_wal'));
  const dataBytes = duBytes(instanceData) - walBytes;
  lines.push(`# dbplane backup bench — ${new Date().toISOString()} — ${cpus().length} × ${cpus()[0]?.model}, node ${process.version}`);
  lines.push(`\nDatabase: PostgreSQL ${database.version}, data directory ${(dataBytes / 1e6).toFixed(0)} MB without pg_wal (+ ${(walBytes / 1e6).toFixed(0)} MB of WAL segments) (${loaded!}, loaded in ${seconds(loadMs)}).`);

  // Raw: tar of the data directory into one file (what a backup reads), then untar it.
  const tarFile = join(scratch, 'raw.tar');
  // Exit 1 is GNU tar's "file changed as we read it": a live server's files do (the backup tolerates it too).
  // Then the file is made durable (coreutils `sync FILE`: an fsync), as pg_basebackup and pg_dump do with their output
  // by default, and as a dbplane backup does before it is completed: a copy still in the page cache is not a backup yet.
  function rawTar(file: string): void {
    const tar = spawnSync('tar', ['-cf', file, '--exclude=./pg_wal/*', '-C', instanceData, '.']);
    if (tar.status !== 0 && tar.status !== 1) throw new Error(`tar: ${tar.stderr}`);
    execFileSync('sync', [file]);
  }
  execFileSync('sync');
  const [, rawTarMs] = await timed(() => rawTar(tarFile));
  const untarDir = join(scratch, 'untar');
  execFileSync('mkdir', [untarDir]);
  execFileSync('sync');
  const [, rawUntarMs] = await timed(() => execFileSync('tar', ['-xf', tarFile, '-C', untarDir]));
  rmSync(untarDir, { recursive: true, force: true });

  // Raw physical restore: a plain base backup (one tar with the WAL it needs), untarred and started.
  const baseTar = existsSync(join(pgBin, 'pg_basebackup')) ? join(scratch, 'basebackup', 'base.tar') : undefined;
  if (baseTar) {
    const socket = join(dataDir, 'agent', 'sockets', serverPort);
    // The agent's pg_hba lets its admin role in over the socket, but not for replication: the bench adds that.
    appendFileSync(join(instanceData, 'pg_hba.conf'), `local replication ${adminRole} trust\n`);
    run(join(pgBin, 'psql'), ['-h', socket, '-p', serverPort, '-U', adminRole, '-d', 'postgres', '-c', 'SELECT pg_reload_conf()'], {});
    run(join(pgBin, 'pg_basebackup'), ['-h', socket, '-p', serverPort, '-U', adminRole, '-D', dirname(baseTar), '-Ft', '-X', 'fetch', '--no-manifest', '-c', 'fast'], {});
    chmodSync(scratch, 0o711);
    chmodSync(dirname(baseTar), 0o755);
    chmodSync(baseTar, 0o644);
  }
  // The same base backup through zstd -1, for a raw restore through the agent's unpacking pipeline (zstd -d | tar -x).
  const baseTarZst = baseTar && `${baseTar}.zst`;
  if (baseTar) {
    execFileSync('zstd', ['-1', '-q', baseTar, '-o', baseTarZst!]);
    chmodSync(baseTarZst!, 0o644);
  }
  async function rawPhysicalRestore(tar: string): Promise<number> {
    const physicalDir = join(scratch, 'physical');
    mkdirSync(physicalDir, { mode: 0o700 });
    if (runAs) execFileSync('chown', [`${runAs.uid}:${runAs.gid}`, physicalDir]);
    // Its own port, socket and log, and no archiving: the copy's dbplane.conf still names the source's archive and log folder.
    const options = `-c port=${await freePort()} -c unix_socket_directories=${physicalDir} -c listen_addresses='' -c archive_mode=off -c logging_collector=off`;
    execFileSync('sync');
    const [, ms] = await timed(() => {
      if (tar.endsWith('.zst')) run('bash', ['-c', 'set -o pipefail; zstd -d -c -q "$0" | tar -x -b 2048 -f - -C "$1"', tar, physicalDir]);
      else run('tar', ['-xf', tar, '-C', physicalDir]);
      run(join(pgBin, 'pg_ctl'), ['start', '-w', '-t', '600', '-D', physicalDir, '-l', join(physicalDir, 'server.log'), '-o', options]);
    });
    run(join(pgBin, 'pg_ctl'), ['stop', '-m', 'fast', '-D', physicalDir]);
    rmSync(physicalDir, { recursive: true, force: true });
    return ms;
  }

  // Raw: what a backup does, without dbplane, one step after the other, each output fsynced: the data directory's tar
  // through zstd -1 to one file, then pg_dump -Fc -Z0 through zstd -1 to another (the agent's pipelines, in
  // agent/backups/service.ts). And, for the figures before the agent piped its dump into zstd: a plain tar, then pg_dump -Fc -Z1.
  const rawDump = existsSync(join(pgBin, 'pg_dump'));
  const dumpFile = join(scratch, 'raw.dump');
  function rawPgDump(options: string[]): void {
    const dump = spawnSync(join(pgBin, 'pg_dump'), ['-Fc', ...options, '-f', dumpFile, dbUrl.toString()]);
    if (dump.status !== 0) throw new Error(`pg_dump: ${dump.stderr}`);
  }
  /** `command | zstd -1 > file`, fsynced; a status of 1 is tolerated for tar's "file changed as we read it". */
  function rawThroughZstd(command: string[], file: string): void {
    const script = 'set -o pipefail; "$@" | zstd -1 -q -c > "$0"; status=$?; [ $status -le 1 ] || exit $status; sync "$0"';
    const piped = spawnSync('bash', ['-c', script, file, ...command]);
    if (piped.status !== 0) throw new Error(`${command[0]} | zstd: ${piped.stderr}`);
  }
  /** The dump step of each raw backup on its own, by the raw side it belongs to: what the agent's choice saves. */
  const dumpAloneRuns = { 'zstd': [] as number[], 'plain tar, pg_dump -Z1': [] as number[] };
  async function rawBackup(pipelines: 'zstd' | 'plain tar, pg_dump -Z1'): Promise<number> {
    const roundTar = join(scratch, 'round.tar');
    execFileSync('sync');
    const [, ms] = await timed(async () => {
      if (pipelines === 'zstd') rawThroughZstd(['tar', '-cf', '-', '--exclude=./pg_wal/*', '-C', instanceData, '.'], roundTar);
      else rawTar(roundTar);
      if (!rawDump) return;
      const [, dumpMs] = await timed(() => pipelines === 'zstd'
        ? rawThroughZstd([join(pgBin, 'pg_dump'), '-Fc', '-Z0', dbUrl.toString()], dumpFile)
        : rawPgDump(['-Z1']));
      dumpAloneRuns[pipelines].push(dumpMs);
    });
    rmSync(roundTar, { force: true });
    return ms;
  }
  // A dbplane operation is timed from the client's call to the `finishedAt` the control plane recorded (same machine,
  // same clock), and polled every 2 s rather than every 100 ms: each poll costs the API and DynamoDB Local ~15 ms of
  // CPU here, taken from the backup on these 2 cores, where in a deployment the control plane runs elsewhere.
  const finished = (operationId: string) => api.waitForOperation(operationId, 1_800_000, 2_000);
  /** The agent's CPU time (user + system) so far, in ms, from /proc (clock ticks of 10 ms on Linux). */
  function agentCpuMs(): number {
    const stat = readFileSync(`/proc/${runtime.agentPid}/stat`, 'utf8');
    const [utime, stime] = stat.slice(stat.lastIndexOf(')') + 2).split(' ').slice(11, 13).map(Number);
    return (utime + stime) * 10;
  }
  const backupAgentCpu: number[] = [];
  async function dbplaneBackup() {
    execFileSync('sync');
    const cpu = agentCpuMs();
    const start = Date.now();
    const started = await api.post('/databases/big/backups');
    const operation = await finished(started.body.operation.id);
    if (operation.status !== 'succeeded') throw new Error(`backup failed: ${operation.error}`);
    backupAgentCpu.push(agentCpuMs() - cpu);
    const backup = (await api.get(`/databases/big/backups/${started.body.backup.id}`)).body;
    return [backup, Date.parse(operation.finishedAt) - start] as const;
  }
  const rawBackupRuns: number[] = [];
  const rawZ1BackupRuns: number[] = [];
  let dumpZstdBytes = 0;
  const backupRuns: number[] = [];
  const made: { id: string; sizeBytes: number; copies: unknown[] }[] = [];
  for (let round = 1; round <= backupRounds; round++) {
    rawBackupRuns.push(await rawBackup('zstd'));
    dumpZstdBytes = rawDump ? statSync(dumpFile).size : 0;
    rawZ1BackupRuns.push(await rawBackup('plain tar, pg_dump -Z1'));
    const [one, ms] = await dbplaneBackup();
    made.push(one);
    backupRuns.push(ms);
  }
  // The restores below restore the first.
  const backup = made[0];
  if (!backup) throw new Error('BENCH_BACKUP_ROUNDS must be at least 1');
  const backupMs = median(backupRuns);
  const dumpBytes = rawDump ? statSync(dumpFile).size : 0;
  // pg_dump's default compression (gzip 6), once: what the agent's -Z1 saves.
  execFileSync('sync');
  const [, defaultDumpMs] = rawDump ? await timed(() => rawPgDump([])) : [undefined, undefined];
  const defaultDumpBytes = rawDump ? statSync(dumpFile).size : 0;

  async function dbplaneRestore(name: string): Promise<number> {
    execFileSync('sync');
    const start = Date.now();
    const started = await api.post('/databases/big/restore', { backupId: backup.id, into: 'new', name });
    const operation = await finished(started.body.operation.id);
    if (operation.status !== 'succeeded') throw new Error(`restore failed: ${operation.error}`);
    const ms = Date.parse(operation.finishedAt) - start;
    // The restored database then takes its own fresh backup: let it finish before anything else is timed.
    for (const deadline = Date.now() + 1_800_000; ;) {
      const { backups } = (await api.get(`/databases/${name}/backups`)).body as { backups: { kind: string; status: string }[] };
      if (backups.some((b) => b.kind === 'post_restore' && b.status !== 'running')) break;
      if (Date.now() > deadline) throw new Error(`the post-restore backup of ${name} did not finish`);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
    return ms;
  }

  // Alternated, several rounds, medians: the machine is shared, and one run of each varies by ±30 % here.
  const physicalRuns: number[] = [];
  const physicalZstdRuns: number[] = [];
  const restoreRuns: number[] = [];
  for (let round = 1; round <= restoreRounds; round++) {
    if (baseTar) physicalRuns.push(await rawPhysicalRestore(baseTar));
    if (baseTarZst) physicalZstdRuns.push(await rawPhysicalRestore(baseTarZst));
    restoreRuns.push(await dbplaneRestore(`big-restored-${round}`));
  }
  const physicalMs = physicalRuns.length > 0 ? median(physicalRuns) : undefined;
  const restoreMs = median(restoreRuns);

  // Encryption alone, against the cipher alone: in a process of its own, as the agent encrypts (bench/encryption.ts).
  const encryption = execFileSync(process.execPath, [...agentNodeFlags, '--import', import.meta.resolve('tsx'), fileURLToPath(new URL('./encryption.ts', import.meta.url))]).toString().trim();

  lines.push('\n| what | time | throughput (data directory bytes without pg_wal / time) | ratio vs raw |');
  lines.push('|---|---|---|---|');
  lines.push(`| raw tar of the data directory (without pg_wal's segments) to one file, fsynced | ${seconds(rawTarMs)} | ${rate(dataBytes, rawTarMs)} | 1 |`);
  if (physicalMs !== undefined) {
    lines.push(`| raw physical restore: untar of a plain base backup (pg_basebackup -Ft -X fetch) + pg_ctl start -w on it (median of ${all(physicalRuns)}) | ${seconds(physicalMs)} | ${rate(dataBytes, physicalMs)} | 1 |`);
    lines.push(`| dbplane restore into a new database (API → running: read a good copy, decrypt, untar, recover, start; median of ${all(restoreRuns)}) | ${seconds(restoreMs)} | ${rate(dataBytes, restoreMs)} | ${(physicalMs / restoreMs).toFixed(2)}× |`);
    const physicalZstdMs = median(physicalZstdRuns);
    lines.push(`| raw physical restore through the agent's unpacking pipeline: the same base backup compressed with zstd -1, \`zstd -d \\| tar -x -b 2048\` + pg_ctl start -w (median of ${all(physicalZstdRuns)}) | ${seconds(physicalZstdMs)} | ${rate(dataBytes, physicalZstdMs)} | 1 |`);
    lines.push(`| dbplane restore vs that | ${seconds(restoreMs)} | ${rate(dataBytes, restoreMs)} | ${(physicalZstdMs / restoreMs).toFixed(2)}× |`);
  }
  lines.push(`| bare untar of the raw tar above (no WAL replay, no server start: not a restore, a floor) | ${seconds(rawUntarMs)} | ${rate(dataBytes, rawUntarMs)} | 1 |`);
  lines.push(`| dbplane restore vs that bare untar | ${seconds(restoreMs)} | ${rate(dataBytes, restoreMs)} | ${(rawUntarMs / restoreMs).toFixed(2)}× |`);
  const rawBackupMs = median(rawBackupRuns);
  const rawZ1BackupMs = median(rawZ1BackupRuns);
  const rawWhat = rawDump
    ? `raw tar of the data directory \\| zstd -1 (fsynced), then raw pg_dump -Fc -Z0 \\| zstd -1 (${(dumpZstdBytes / 1e6).toFixed(0)} MB, fsynced): the agent's pipelines, one after the other`
    : 'raw tar of the data directory \\| zstd -1 (fsynced) (no Debian PostgreSQL 15 toolset: no raw pg_dump)';
  lines.push(`| ${rawWhat} (median of ${all(rawBackupRuns)}) | ${seconds(rawBackupMs)} | ${rate(dataBytes, rawBackupMs)} | 1 |`);
  lines.push(`| dbplane backup (API → completed: tar + zstd -1 + AES-256-GCM, and its pg_dump + zstd -1 beside it; 3 copies of each written and read back; median of ${all(backupRuns)}) | ${seconds(backupMs)} | ${rate(dataBytes, backupMs)} | **${(rawBackupMs / backupMs).toFixed(2)}×** |`);
  if (rawDump) {
    lines.push(`| raw plain tar of the data directory (fsynced), then raw pg_dump -Fc -Z1 (${(dumpBytes / 1e6).toFixed(0)} MB, fsynced by pg_dump), one after the other: the baseline before the agent piped its dump into zstd (median of ${all(rawZ1BackupRuns)}) | ${seconds(rawZ1BackupMs)} | ${rate(dataBytes, rawZ1BackupMs)} | 1 |`);
    lines.push(`| dbplane backup vs that | ${seconds(backupMs)} | ${rate(dataBytes, backupMs)} | ${(rawZ1BackupMs / backupMs).toFixed(2)}× |`);
  }
  if (rawDump) {
    const dumpZstdMs = median(dumpAloneRuns.zstd);
    const dumpZ1Ms = median(dumpAloneRuns['plain tar, pg_dump -Z1']);
    lines.push(`| the dump step alone: raw pg_dump -Fc -Z0 \\| zstd -1 (${(dumpZstdBytes / 1e6).toFixed(0)} MB; median of ${all(dumpAloneRuns.zstd)}) | ${seconds(dumpZstdMs)} | ${rate(dataBytes, dumpZstdMs)} | ${(dumpZ1Ms / dumpZstdMs).toFixed(2)}× of pg_dump -Z1 |`);
    lines.push(`| the dump step alone: raw pg_dump -Fc -Z1 (${(dumpBytes / 1e6).toFixed(0)} MB; median of ${all(dumpAloneRuns['plain tar, pg_dump -Z1'])}) | ${seconds(dumpZ1Ms)} | ${rate(dataBytes, dumpZ1Ms)} | 1 |`);
  }
  if (defaultDumpMs !== undefined) {
    lines.push(`| for reference: raw pg_dump -Fc at its default compression (gzip 6; ${(defaultDumpBytes / 1e6).toFixed(0)} MB), alone | ${seconds(defaultDumpMs)} | ${rate(dataBytes, defaultDumpMs)} | — |`);
  }
  lines.push(`| the agent's CPU (user + system, /proc) per dbplane backup (median of ${all(backupAgentCpu)}) | ${seconds(median(backupAgentCpu))} | — | — |`);
  lines.push(encryption);
  lines.push(`\nStored per copy: ${(backup.sizeBytes / 1e6).toFixed(0)} MB × ${backup.copies.length} copies.`);
} finally {
  await runtime.stop();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(scratch, { recursive: true, force: true });
}
console.log(lines.join('\n'));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer().once('error', reject).listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}
