import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import { createEncryptor } from '../agent/backups/crypto.ts';
import { startRuntime } from '../local/runtime.ts';
import { apiClient, newTenant } from '../test/helpers/api.ts';
import { connect } from '../test/helpers/databases.ts';

/**
 * `npm run bench:backups`: on this machine, in one run, with a database of BENCH_BACKUP_MB (default
 * 1100) MB of incompressible rows on PostgreSQL 15 (so Debian's pg_dump 15 can dump it):
 *  1. backup (API call to a completed backup: encrypted, three copies) vs a raw tar of the data directory to one file;
 *  2. restore into a new database (API call to running) vs a raw untar of that tar;
 *  3. raw pg_dump -Fc of the same database, for scale;
 *  4. AES-256-GCM chunked encryption alone, in memory.
 */

const targetMb = Number(process.env.BENCH_BACKUP_MB ?? 1100);
const pgBin = '/usr/lib/postgresql/15/bin';

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
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
const runtime = await startRuntime({ dataDir, port: 0, fastWaits: true });
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
  // ~1 kB of random hex per row: incompressible, like real data at worst.
  const rows = Math.ceil((targetMb * 1e6) / 1100);
  const [, loadMs] = await timed(async () => {
    await client.query('create table blobs (id bigint primary key, body text)');
    for (let done = 0; done < rows; done += 100_000) {
      // The aggregate must see the inner series (s), or PostgreSQL would attach it to the outer query.
      await client.query(`insert into blobs select g, x.body from generate_series($1::bigint, $2::bigint) g,
        lateral (select string_agg(md5(random()::text || s::text || g::text), '') as body from generate_series(1, 32) s) x`, [done + 1, Math.min(rows, done + 100_000)]);
    }
  });
  await client.end();
  const instanceData = join(dataDir, 'agent', 'instances', database.id, 'data');
  const dataBytes = duBytes(instanceData);
  lines.push(`# dbplane backup bench — ${new Date().toISOString()} — ${cpus().length} × ${cpus()[0]?.model}, node ${process.version}`);
  lines.push(`\nDatabase: PostgreSQL ${database.version}, data directory ${(dataBytes / 1e6).toFixed(0)} MB (${rows} rows of ~1 kB random hex, loaded in ${seconds(loadMs)}).`);

  // Raw: tar of the data directory into one file (what a backup reads), then untar it.
  const tarFile = join(scratch, 'raw.tar');
  execFileSync('sync');
  // Exit 1 is GNU tar's "file changed as we read it": a live server's files do (the backup tolerates it too).
  const [, rawTarMs] = await timed(() => {
    const tar = spawnSync('tar', ['-cf', tarFile, '-C', instanceData, '.']);
    if (tar.status !== 0 && tar.status !== 1) throw new Error(`tar: ${tar.stderr}`);
  });
  const untarDir = join(scratch, 'untar');
  execFileSync('mkdir', [untarDir]);
  const [, rawUntarMs] = await timed(() => execFileSync('tar', ['-xf', tarFile, '-C', untarDir]));
  rmSync(untarDir, { recursive: true, force: true });

  const [backup, backupMs] = await timed(async () => {
    const started = await api.post('/databases/big/backups');
    const operation = await api.waitForOperation(started.body.operation.id, 1_800_000);
    if (operation.status !== 'succeeded') throw new Error(`backup failed: ${operation.error}`);
    return (await api.get(`/databases/big/backups/${started.body.backup.id}`)).body;
  });

  const [, restoreMs] = await timed(async () => {
    const started = await api.post('/databases/big/restore', { backupId: backup.id, into: 'new', name: 'big-restored' });
    const operation = await api.waitForOperation(started.body.operation.id, 1_800_000);
    if (operation.status !== 'succeeded') throw new Error(`restore failed: ${operation.error}`);
  });

  let dumpLine = 'raw pg_dump: not measured (no Debian PostgreSQL 15 toolset)';
  let rawDumpMs: number | undefined;
  if (existsSync(join(pgBin, 'pg_dump'))) {
    const url = new URL(database.url);
    url.password = created.body.password;
    const dumpFile = join(scratch, 'raw.dump');
    const [dump, dumpMs] = await timed(() => spawnSync(join(pgBin, 'pg_dump'), ['-Fc', '-f', dumpFile, url.toString()]));
    if (dump.status !== 0) throw new Error(`pg_dump: ${dump.stderr}`);
    rawDumpMs = dumpMs;
    dumpLine = `| raw pg_dump -Fc (one file, compressed to ${(statSync(dumpFile).size / 1e6).toFixed(0)} MB) | ${seconds(dumpMs)} | ${rate(dataBytes, dumpMs)} | — |`;
  }

  // Encryption alone: 1 GiB through the chunked AES-256-GCM transform, in memory.
  const block = randomBytes(16 * 1024 * 1024);
  const [, encryptMs] = await timed(() => pipeline(
    Readable.from((function* () { for (let i = 0; i < 64; i++) yield block; })()),
    createEncryptor(randomBytes(32), 1),
    new Writable({ write: (_chunk, _encoding, done) => done() }),
  ));

  lines.push('\n| what | time | throughput (data directory bytes / time) | ratio vs raw |');
  lines.push('|---|---|---|---|');
  lines.push(`| raw tar of the data directory to one file | ${seconds(rawTarMs)} | ${rate(dataBytes, rawTarMs)} | 1 |`);
  lines.push(`| dbplane backup (API → completed: tar + zstd -1 + AES-256-GCM, and its pg_dump beside it; 3 copies of each written and read back) | ${seconds(backupMs)} | ${rate(dataBytes, backupMs)} | ${(rawTarMs / backupMs).toFixed(2)}× |`);
  lines.push(`| raw untar of that tar | ${seconds(rawUntarMs)} | ${rate(dataBytes, rawUntarMs)} | 1 |`);
  lines.push(`| dbplane restore into a new database (API → running: read a good copy, decrypt, untar, recover, start) | ${seconds(restoreMs)} | ${rate(dataBytes, restoreMs)} | ${(rawUntarMs / restoreMs).toFixed(2)}× |`);
  lines.push(dumpLine);
  if (rawDumpMs !== undefined) {
    const rawBoth = rawTarMs + rawDumpMs;
    lines.push(`| raw tar + raw pg_dump, one after the other (the work of a backup with its dump) | ${seconds(rawBoth)} | ${rate(dataBytes, rawBoth)} | 1 |`);
    lines.push(`| dbplane backup vs that | ${seconds(backupMs)} | ${rate(dataBytes, backupMs)} | ${(rawBoth / backupMs).toFixed(2)}× |`);
  }
  lines.push(`| AES-256-GCM chunked encryption alone, 1 GiB in memory | ${seconds(encryptMs)} | ${rate(1024 ** 3, encryptMs)} | — |`);
  lines.push(`\nStored per copy: ${(backup.sizeBytes / 1e6).toFixed(0)} MB × ${backup.copies.length} copies.`);
} finally {
  await runtime.stop();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(scratch, { recursive: true, force: true });
}
console.log(lines.join('\n'));
