import { execFileSync, spawn } from 'node:child_process';
import { constants, existsSync } from 'node:fs';
import { get as httpGet, type IncomingMessage } from 'node:http';
import { chown, mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { zstdDecompressSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ArchiveSummary, BackupJob, downloadSignature, HostInfo, Instance, RestoreJob, TableStats, WalRetentionResult,
  type EnsureInstance, type StartRestore, type WrappedKey,
} from '#core/agent-api.ts';
import { LocalKeyWrapper, newWrappedDataKey } from '#core/keys.ts';
import { ioBlockBytes } from '../agent/backups/aligned.ts';
import { chunkBytes, createDecryptor, createEncryptor, decryptFile } from '../agent/backups/crypto.ts';
import { TarJoiner, tarEntry, tarTrailer } from '../agent/backups/tar.ts';
import { agentCaller, appInstanceSpec, appQuery, eventually } from './helpers/agent.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';
import { acceptsEncoding } from '../agent/server.ts';
import { walToken } from '../agent/backups/service.ts';

const secret = 'backup-test-secret';
const password = 'backups are not optional';
/** A value no PostgreSQL file holds by chance: found in a zone's files only if something is stored in clear. */
const distinctive = 'zebra-quokka-7731-plaintext-canary';

let tempDir: string;
let backupDir: string;
let agent: AgentProcess;

const call = agentCaller(() => agent, secret);


const running = (id: string) => eventually(async () => {
  const instance = Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
  return instance.status === 'running' ? instance : undefined;
});

async function backupDone(id: string, backupId: string): Promise<BackupJob> {
  return eventually(async () => {
    const job = BackupJob.parse((await call('GET', `/v1/archives/${id}/backups/${backupId}`)).body);
    return job.status === 'running' ? undefined : job;
  });
}

async function restoreDone(id: string, restoreId: string): Promise<RestoreJob> {
  return eventually(async () => {
    const job = RestoreJob.parse((await call('GET', `/v1/instances/${id}/restores/${restoreId}`)).body);
    return job.status === 'running' ? undefined : job;
  }, 90_000);
}

const query = <T extends pg.QueryResultRow>(port: number, sql: string) => appQuery<T>(port, password, sql);

/** As the agent's admin role, over the instance's unix socket (what pg_switch_wal and SHOW need). */
async function adminQuery<T extends pg.QueryResultRow>(port: number, sql: string, database = 'app'): Promise<T[]> {
  const client = new pg.Client({ host: join(tempDir, 'agent', 'sockets', String(port)), port, user: 'dbplane_admin', database });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Ends the current WAL segment and waits until the archive holds it. */
async function switchWal(id: string, port: number): Promise<string> {
  const [{ wal }] = await adminQuery<{ wal: string }>(port, 'SELECT pg_walfile_name(pg_switch_wal()) AS wal');
  await eventually(async () => stat(join(backupDir, 'zone-c', id, 'wal', `${wal}.json`)).then(() => true), 30_000);
  return wal;
}

/** The WAL objects of a database's archive in one zone. */
const walObjects = async (zone: string, id: string) => readdir(join(backupDir, zone, id, 'wal')).catch(() => [] as string[]);
const storedMeta = async (zone: string, id: string, backupId: string) =>
  JSON.parse(await readFile(join(backupDir, zone, id, 'base', `${backupId}.json`), 'utf8')) as { startWal?: string };

const runningAsRoot = process.getuid?.() === 0;
/** Debian's PostgreSQL 15 client tools (package postgresql-15): the pg_dump the agent dumps 14 and 15 with, and pg_restore for the test. */
const pgDump15 = '/usr/lib/postgresql/15/bin/pg_dump';
const pgRestore15 = '/usr/lib/postgresql/15/bin/pg_restore';

const ids = (prefix: 'bk' | 'op') => `${prefix}-${randomBytes(16).toString('hex').slice(0, 26)}`;
const zoneFile = (zone: string, id: string, backupId: string) => join(backupDir, zone, id, 'base', `${backupId}.tar.zst.enc`);

async function flipByte(path: string, at: number): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, at);
    byte[0] ^= 0xff;
    await handle.write(byte, 0, 1, at);
  } finally {
    await handle.close();
  }
}

/**
 * What a customer does with a download: untar into an empty folder and start PostgreSQL on it (the
 * tar holds backup_label and the WAL the backup needs). Returns the rows of app.notes it then serves.
 */
async function rowsOfUnpackedDownload(tarFile: string, version: string): Promise<unknown[]> {
  const owner = runningAsRoot
    ? { uid: Number(execFileSync('id', ['-u', 'dbplane-pg'], { encoding: 'utf8' })), gid: Number(execFileSync('id', ['-g', 'dbplane-pg'], { encoding: 'utf8' })) }
    : {};
  const dir = join(tempDir, 'unpacked');
  await mkdir(dir, { mode: 0o700 });
  if (runningAsRoot) await chown(dir, owner.uid!, owner.gid!);
  execFileSync('tar', ['-xf', tarFile, '-C', dir], owner);
  const native = join(process.cwd(), 'node_modules', `pg${version.split('.')[0]}`, 'native');
  const socketPort = 5999;
  const server = spawn(join(native, 'bin', 'postgres'), ['-D', dir, '-p', String(socketPort), '-k', dir, '-c', 'listen_addresses='], {
    ...owner, env: { LD_LIBRARY_PATH: join(native, 'lib'), LC_ALL: 'C.UTF-8' }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let said = '';
  server.stderr!.setEncoding('utf8').on('data', (chunk: string) => { said += chunk; });
  const exited = new Promise((resolve) => server.once('exit', resolve));
  try {
    return await eventually(async () => {
      if (server.exitCode !== null) throw new Error(`postgres exited: ${said.slice(-800)}`);
      const client = new pg.Client({ host: dir, port: socketPort, user: 'dbplane_admin', database: 'app' });
      client.on('error', () => undefined);
      await client.connect();
      try {
        return (await client.query('SELECT id, body FROM notes ORDER BY id')).rows;
      } finally {
        await client.end();
      }
    }, 30_000);
  } finally {
    server.kill('SIGINT');
    await exited;
  }
}

/** What a sealed object decrypts to, through the stream (downloads, WAL) or read from its file (restores). */
type Opener = (sealed: Buffer, keyFor: (version: number) => Buffer | undefined, what: string, object: string, unboundAllowed: boolean) => Promise<Buffer>;
const openers: [string, Opener][] = [
  ['createDecryptor (a stream)', (sealed, ...args) => buffer(Readable.from([sealed]).pipe(createDecryptor(...args)))],
  ['decryptFile (read from its file, with direct I/O)', async (sealed, ...args) => {
    const dir = await mkdtemp(join(tmpdir(), 'dbplane-sealed-'));
    try {
      await writeFile(join(dir, 'object'), sealed);
      const file = await open(join(dir, 'object'), constants.O_RDONLY | constants.O_DIRECT);
      try {
        return await buffer(Readable.from(decryptFile(file, ...args)));
      } finally {
        await file.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }],
];

describe.each(openers)('backup encryption, opened by %s', (_how, opener) => {
  const key = randomBytes(32);
  const plain = randomBytes(2 * chunkBytes + 1234);
  const object = 'db-x/base/bk-x.tar.zst.enc';
  const seal = (name = object, bytes = plain) => buffer(Readable.from([bytes]).pipe(createEncryptor(key, 3, name)));
  const openSealed = (sealed: Buffer, unboundAllowed = false) => opener(sealed, (v) => (v === 3 ? key : undefined), 'backup bk-x in zone-q', object, unboundAllowed);

  it('round-trips a stream of several chunks, without the plaintext in what it stores', async () => {
    const sealed = await seal();

    expect(sealed.includes(plain.subarray(0, 64))).toBe(false);
    expect((await openSealed(sealed)).equals(plain)).toBe(true);
  });

  it('rejects altered, truncated and reordered streams, naming the object and zone', async () => {
    const sealed = await seal();
    const sealedChunk = chunkBytes + 16;
    const header = sealed.subarray(0, sealed.length - 2 * sealedChunk - 1234 - 16);
    const [first, second] = [0, 1].map((i) => sealed.subarray(header.length + i * sealedChunk, header.length + (i + 1) * sealedChunk));
    const altered = Buffer.from(sealed);
    altered[altered.length - 100] ^= 1;

    await expect(openSealed(altered)).rejects.toThrow(/backup bk-x in zone-q: chunk 2 failed authentication/);
    await expect(openSealed(sealed.subarray(0, header.length + 2 * sealedChunk))).rejects.toThrow(/bk-x in zone-q/);
    await expect(openSealed(sealed.subarray(0, sealed.length - 10))).rejects.toThrow(/bk-x in zone-q/);
    await expect(openSealed(Buffer.concat([header, second, first, sealed.subarray(header.length + 2 * sealedChunk)]))).rejects.toThrow(/chunk 0/);
  });

  it('round-trips an object of several 4 MiB read blocks, its chunks across their boundaries', async () => {
    const large = randomBytes(3 * ioBlockBytes + 12_345);
    expect((await openSealed(await seal(object, large))).equals(large)).toBe(true);
  });

  it('round-trips an empty object, and one of exactly two chunks (its final chunk full)', async () => {
    for (const bytes of [Buffer.alloc(0), plain.subarray(0, 2 * chunkBytes)]) expect((await openSealed(await seal(object, bytes))).equals(bytes)).toBe(true);
  });

  it('rejects a stream cut at a chunk boundary, and one cut inside its header', async () => {
    const sealed = await seal(object, plain.subarray(0, 2 * chunkBytes));

    await expect(openSealed(sealed.subarray(0, sealed.length - chunkBytes - 16))).rejects.toThrow(/bk-x in zone-q: chunk 0 failed authentication/);
    await expect(openSealed(sealed.subarray(0, 10))).rejects.toThrow(/bk-x in zone-q: (truncated|not an encrypted)/);
  });

  it('rejects another object sealed with the same key: the name is bound to every tag', async () => {
    await expect(openSealed(await seal('db-x/base/bk-y.tar.zst.enc'))).rejects.toThrow(/bk-x in zone-q: chunk 0 failed authentication/);
  });

  it('opens an object sealed before names were bound (format 1) only where a checksum is checked too', async () => {
    // Sealed by the format 1 code, under key 0x11…, key version 3.
    const legacy = Buffer.from('REJQRQEAAAADZW2rOGqNWv0SLzkQN88WI/ayQUo845Ir7OqwRtywOsN+EU83aW27XoI/dgVkeDpPyvGsZVwdFz5KdSCCRKWZwEF1lGU8Xao=', 'base64');
    const openLegacy = (unboundAllowed: boolean) => opener(legacy, () => Buffer.alloc(32, 0x11), 'backup bk-old', 'any/name', unboundAllowed);

    expect((await openLegacy(true)).toString()).toBe('sealed before objects were bound to their names');
    await expect(openLegacy(false)).rejects.toThrow(/bk-old: sealed without its name/);
  });
});

describe('tar joiner', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dbplane-tar-'));
    await mkdir(join(dir, 'data', 'base'), { recursive: true });
    // A file whose data ends in zero blocks, like a relation file's unwritten pages: no end-of-archive marker.
    await writeFile(join(dir, 'data', 'base', '16384'), Buffer.concat([randomBytes(1000), Buffer.alloc(8192)]));
    await writeFile(join(dir, 'data', 'empty'), '');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  /** As a backup stores it: GNU tar's archive with 1 MiB records, then one of entries known after; joined in odd pieces (headers cut across them), then untarred. */
  async function joinAndExtract(into: string, pieceBytes: number): Promise<void> {
    const owner = { uid: process.getuid!(), gid: process.getgid!() };
    const archive = Buffer.concat([
      execFileSync('tar', ['-c', '-b', '2048', '-f', '-', '-C', join(dir, 'data'), '.']),
      tarEntry('./backup_label', Buffer.from('label'), owner), tarTrailer(),
    ]);
    const pieces = Array.from({ length: Math.ceil(archive.length / pieceBytes) }, (_, i) => archive.subarray(i * pieceBytes, (i + 1) * pieceBytes));
    const joined = await buffer(Readable.from(pieces).pipe(new TarJoiner()));
    expect(joined.length).toBeLessThan(archive.length); // the first archive's marker and record padding are gone
    await mkdir(into);
    execFileSync('tar', ['-x', '-f', '-', '-C', into], { input: joined });
  }

  it('makes one archive of archives in a row, for a plain tar -x: keeps data ending in zeros, drops the markers between', async () => {
    for (const pieceBytes of [777, 65536]) {
      const into = join(dir, `out-${pieceBytes}`);
      await joinAndExtract(into, pieceBytes);
      expect((await readFile(join(into, 'base', '16384'))).equals(await readFile(join(dir, 'data', 'base', '16384')))).toBe(true);
      expect(await readFile(join(into, 'backup_label'), 'utf8')).toBe('label');
      expect((await stat(join(into, 'empty'))).size).toBe(0);
    }
  });

  it('fails a stream that does not end with an end-of-archive marker', async () => {
    const entry = tarEntry('./a', Buffer.from('a'), { uid: 0, gid: 0 });
    const through = (bytes: Buffer) => buffer(Readable.from([bytes]).pipe(new TarJoiner()));
    await expect(through(entry)).rejects.toThrow(/did not end with an end-of-archive marker/);
    await expect(through(Buffer.concat([entry, tarTrailer(), entry]))).rejects.toThrow(/did not end with an end-of-archive marker/);
  });
});

describe('agent backups and restores', () => {
  let wrapper: LocalKeyWrapper;
  let spec: EnsureInstance;
  let dataKey: WrappedKey;
  let port: number;
  const first = ids('bk');
  const second = ids('bk');

  beforeAll(async () => {
    tempDir = await mkdtemp(join(tmpdir(), 'dbplane-backups-'));
    backupDir = join(tempDir, 'backups');
    const masterKeyFile = join(tempDir, 'master.key');
    wrapper = LocalKeyWrapper.fromFile(masterKeyFile);
    agent = await spawnAgent({ dataDir: join(tempDir, 'agent'), secret, faults: true, masterKeyFile, backupDir });
    const host = HostInfo.parse((await call('GET', '/v1/host')).body);
    dataKey = { version: 1, wrapped: await newWrappedDataKey(wrapper, 'app-db') };
    spec = appInstanceSpec(host, password, { dataKey });
    await call('PUT', '/v1/instances/app-db', spec);
    port = (await running('app-db')).port;
    await query(port, 'CREATE TABLE notes (id int PRIMARY KEY, body text)');
    await query(port, `INSERT INTO notes VALUES (1, 'kept'), (2, '${distinctive}')`);
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    if (tempDir) await rm(tempDir, { recursive: true, force: true });
  });

  it('answers 401 to the backup routes without the agent secret', async () => {
    const source = { databaseId: 'app-db', backupId: first, dataKey };
    const calls = await Promise.all([
      call('PUT', `/v1/instances/app-db/backups/${first}`, { kind: 'manual' }, 'nope'),
      call('GET', `/v1/archives/app-db/backups/${first}`, undefined, 'nope'),
      call('DELETE', `/v1/archives/app-db/backups/${first}`, undefined, 'nope'),
      call('GET', '/v1/archives/app-db', undefined, 'nope'),
      call('DELETE', '/v1/archives/app-db', undefined, 'nope'),
      call('PUT', `/v1/instances/app-db/restores/${ids('op')}`, { mode: 'in_place', source }, 'nope'),
      call('GET', `/v1/instances/app-db/restores/${ids('op')}`, undefined, 'nope'),
      // WAL routes take the per-database token, not even the agent secret.
      call('GET', '/v1/archives/app-db/wal/000000010000000000000001', undefined, secret),
    ]);

    expect(calls.map((c) => c.status)).toEqual(Array(calls.length).fill(401));
  });

  it('takes a base backup into three zones, each copy verified', async () => {
    const started = await call('PUT', `/v1/instances/app-db/backups/${first}`, { kind: 'manual' });

    expect(started.status).toBe(202);
    expect(BackupJob.parse(started.body).status).toBe('running');
    const job = await backupDone('app-db', first);
    expect(job).toMatchObject({ status: 'completed', keyVersion: 1 });
    expect(job.copies.map((c) => c.zone)).toEqual(['zone-a', 'zone-b', 'zone-c']);
    expect(job.copies.every((c) => c.ok && c.sha256 === job.sha256)).toBe(true);
    expect(Date.parse(job.consistentAt!)).toBeGreaterThanOrEqual(Date.parse(job.startedAt));
    expect((await stat(zoneFile('zone-b', 'app-db', first))).size).toBe(job.sizeBytes);
    const again = await call('PUT', `/v1/instances/app-db/backups/${first}`, { kind: 'manual' });
    expect(again).toMatchObject({ status: 200, body: { id: first, status: 'completed', sha256: job.sha256 } });
  });

  it('reports the archived WAL', async () => {
    const summary = ArchiveSummary.parse((await call('GET', '/v1/archives/app-db')).body);

    expect(summary.walSegments).toBeGreaterThan(0);
    expect(Date.parse(summary.lastWalArchivedAt!)).toBeLessThanOrEqual(Date.now());
  });

  it('keeps the WAL token out of archive_command and restore_command: curl reads it from a file only the server\'s user can read', async () => {
    const token = walToken(secret, 'app-db');
    for (const setting of ['archive_command', 'restore_command']) {
      const [row] = await adminQuery<Record<string, string>>(port, `SHOW ${setting}`);
      const command = row[setting];
      expect(command).toMatch(/^curl /);
      expect(command).not.toContain(token);
      const headerFile = /--header @'([^']+)'/.exec(command)?.[1];
      expect(headerFile).toBeDefined();
      expect((await stat(headerFile!)).mode & 0o777).toBe(0o600);
      expect(await readFile(headerFile!, 'utf8')).toBe(`Authorization: Bearer ${token}\n`);
    }
  });

  it('fails the next backup when a backup fault is armed', async () => {
    const failing = ids('bk');
    await call('PUT', '/v1/faults', { operation: 'backup', message: 'bucket on fire' });

    await call('PUT', `/v1/instances/app-db/backups/${failing}`, { kind: 'scheduled' });

    expect(await backupDone('app-db', failing)).toMatchObject({ status: 'failed', reason: 'bucket on fire', copies: [] });
    expect((await call('DELETE', `/v1/archives/app-db/backups/${failing}`)).status).toBe(204);
    expect((await call('GET', `/v1/archives/app-db/backups/${failing}`)).status).toBe(404);
  });

  it('serves a signed download as a tar that starts a server as it is; refuses a bad or expired signature', async () => {
    const expires = Math.floor(Date.now() / 1000) + 300;
    const url = (e: number, signature: string) => `${agent.url}/v1/downloads/app-db/${first}?expires=${e}&signature=${signature}`;

    const forged = await fetch(url(expires, downloadSignature('other-secret', 'app-db', first, expires)));
    const expired = await fetch(url(1_000, downloadSignature(secret, 'app-db', first, 1_000)));
    const good = await fetch(url(expires, downloadSignature(secret, 'app-db', first, expires)));

    expect(forged.status).toBe(403);
    expect(expired.status).toBe(403);
    expect(good.status).toBe(200);
    expect(good.headers.get('content-type')).toBe('application/x-tar');
    expect(good.headers.get('content-disposition')).toContain(`${first}.tar`);
    const tarFile = join(tempDir, 'download.tar');
    await pipeline(Readable.fromWeb(good.body as never), (await open(tarFile, 'w')).createWriteStream());
    const members = execFileSync('tar', ['-tf', tarFile], { encoding: 'utf8' }).split('\n');
    expect(members).toEqual(expect.arrayContaining(['./PG_VERSION', './backup_label']));
    expect(members.some((m) => /^\.\/pg_wal\/[0-9A-F]{24}$/.test(m))).toBe(true);
    expect(await rowsOfUnpackedDownload(tarFile, spec.version)).toEqual([{ id: 1, body: 'kept' }, { id: 2, body: distinctive }]);
  }, 60_000);

  it('restores in place to the backup, on the same port, on a new timeline whose history is archived by then', async () => {
    await query(port, "UPDATE notes SET body = 'changed' WHERE id = 1");
    await query(port, 'INSERT INTO notes VALUES (3, $$added later$$)');
    const restoreId = ids('op');
    const request: StartRestore = { mode: 'in_place', source: { databaseId: 'app-db', backupId: first, dataKey } };

    const started = await call('PUT', `/v1/instances/app-db/restores/${restoreId}`, request);
    // A long poll: answered once the restore has ended, not while it runs.
    const polled = await call('GET', `/v1/instances/app-db/restores/${restoreId}?waitSeconds=20`);

    expect(started.status).toBe(202);
    expect(RestoreJob.parse(polled.body)).toMatchObject({ status: 'completed' });
    expect((await call('PUT', `/v1/instances/app-db/restores/${restoreId}`, request)).status).toBe(200);
    expect((await running('app-db')).port).toBe(port);
    expect(await query(port, 'SELECT id, body FROM notes ORDER BY id')).toEqual([{ id: 1, body: 'kept' }, { id: 2, body: distinctive }]);
    const [{ timeline }] = await adminQuery<{ timeline: number }>(port, 'SELECT timeline_id AS timeline FROM pg_control_checkpoint()');
    expect(timeline).toBe(2);
    expect(await walObjects('zone-c', 'app-db')).toEqual(expect.arrayContaining(['00000002.history.enc', '00000002.history.json']));
  }, 120_000);

  it('refuses a long poll of more than 20 s (400)', async () => {
    expect((await call('GET', `/v1/archives/app-db/backups/${first}?waitSeconds=21`)).status).toBe(400);
  });

  it('restores a new instance to a point in time between two commits', async () => {
    expect((await call('PUT', `/v1/instances/app-db/backups/${second}`, { kind: 'scheduled' })).status).toBe(202);
    expect(await backupDone('app-db', second)).toMatchObject({ status: 'completed' });
    await query(port, "INSERT INTO notes VALUES (10, 'row A')");
    const [{ at }] = await query<{ at: string }>(port, `SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at`);
    await query(port, "INSERT INTO notes VALUES (11, 'row B')");
    const restoreId = ids('op');
    const newSpec = { ...spec, dataKey: { version: 1, wrapped: await newWrappedDataKey(wrapper, 'pitr-db') } };

    await call('PUT', `/v1/instances/pitr-db/restores/${restoreId}`, {
      mode: 'new', source: { databaseId: 'app-db', backupId: second, dataKey }, pointInTime: at, spec: newSpec,
    } satisfies StartRestore);

    expect(await restoreDone('pitr-db', restoreId)).toMatchObject({ status: 'completed', recoveredTo: at });
    const restored = await running('pitr-db');
    expect(restored.port).not.toBe(port);
    expect(await query(restored.port, 'SELECT id FROM notes WHERE id >= 10 ORDER BY id')).toEqual([{ id: 10 }]);
    expect(await query(port, 'SELECT id FROM notes WHERE id >= 10 ORDER BY id')).toEqual([{ id: 10 }, { id: 11 }]);
    // From now on the new instance archives into its own archive.
    await query(restored.port, 'SELECT pg_switch_wal()').catch(() => undefined);
    await eventually(async () => ((await call('GET', '/v1/archives/pitr-db')).body.walSegments > 0 ? true : undefined));
  }, 120_000);

  it('restores a new instance to a backup: its first start recovers the data, on the source\'s timeline, with no scratch server', async () => {
    await query(port, "INSERT INTO notes VALUES (12, 'after the backup')");
    const restoreId = ids('op');
    const newSpec = { ...spec, dataKey: { version: 1, wrapped: await newWrappedDataKey(wrapper, 'fork-db') } };

    await call('PUT', `/v1/instances/fork-db/restores/${restoreId}`, {
      mode: 'new', source: { databaseId: 'app-db', backupId: second, dataKey }, spec: newSpec,
    } satisfies StartRestore);

    const backup = await backupDone('app-db', second);
    expect(await restoreDone('fork-db', restoreId)).toMatchObject({ status: 'completed', recoveredTo: backup.consistentAt });
    const restored = await running('fork-db');
    expect(await query(restored.port, 'SELECT id, body FROM notes ORDER BY id')).toEqual([{ id: 1, body: 'kept' }, { id: 2, body: distinctive }]);
    // The source is on timeline 2 since the restore in place above; a scratch server would have promoted to 3.
    const [{ timeline }] = await adminQuery<{ timeline: number }>(restored.port, 'SELECT timeline_id AS timeline FROM pg_control_checkpoint()');
    expect(timeline).toBe(2);
    // Its own WAL goes to its own archive (an idle server switches segments for nothing: a write, then a switch).
    await query(restored.port, "INSERT INTO notes VALUES (13, 'only in the fork')");
    await adminQuery(restored.port, 'SELECT pg_switch_wal()');
    await eventually(async () => ((await call('GET', '/v1/archives/fork-db')).body.walSegments > 0 ? true : undefined));
    expect((await call('DELETE', '/v1/instances/fork-db')).status).toBe(204);
    expect((await call('DELETE', '/v1/archives/fork-db')).status).toBe(204);
  }, 120_000);

  it('stores no plaintext: the distinctive row is in no zone file', async () => {
    const found = (() => {
      try {
        return execFileSync('grep', ['-r', '-l', '-a', distinctive, backupDir], { encoding: 'utf8' });
      } catch (error) {
        if ((error as { status?: number }).status === 1) return '';
        throw error;
      }
    })();

    const walFile = execFileSync('find', [join(backupDir, 'zone-c', 'app-db', 'wal'), '-name', '0*.enc'], { encoding: 'utf8' }).split('\n')[0];

    expect((await call('GET', '/v1/archives/app-db')).body.walSegments).toBeGreaterThan(0);
    expect(found).toBe('');
    // Sealed objects (format header "DBPE"), not merely compressed ones.
    expect((await readFile(zoneFile('zone-c', 'app-db', first))).subarray(0, 4).toString()).toBe('DBPE');
    expect((await readFile(walFile)).subarray(0, 4).toString()).toBe('DBPE');
  });

  it('restores from the zone left when one copy was tampered with and another swapped for a backup sealed with the same key', async () => {
    await query(port, "INSERT INTO notes VALUES (30, 'only in the backup swapped in')");
    const third = ids('bk');
    await call('PUT', `/v1/instances/app-db/backups/${third}`, { kind: 'manual' });
    expect(await backupDone('app-db', third)).toMatchObject({ status: 'completed' });
    await flipByte(zoneFile('zone-a', 'app-db', second), 5000);
    // Same key, another object: its first GCM tag, bound to the name it was sealed under, tells it is another backup.
    await writeFile(zoneFile('zone-b', 'app-db', second), await readFile(zoneFile('zone-b', 'app-db', third)));
    const restoreId = ids('op');

    await call('PUT', `/v1/instances/app-db/restores/${restoreId}`, { mode: 'in_place', source: { databaseId: 'app-db', backupId: second, dataKey } });

    expect(await restoreDone('app-db', restoreId)).toMatchObject({ status: 'completed' });
    // The rows of `second` (zone-c), none of the swapped-in backup.
    expect(await query(port, 'SELECT id FROM notes ORDER BY id')).toEqual([{ id: 1 }, { id: 2 }]);
    // The second restore in place: the next timeline, chosen from the histories in the archive.
    const [{ timeline }] = await adminQuery<{ timeline: number }>(port, 'SELECT timeline_id AS timeline FROM pg_control_checkpoint()');
    expect(timeline).toBe(3);
  }, 120_000);

  it('fails a restore naming the backup when no copy is good, and the instance keeps its data', async () => {
    await query(port, "INSERT INTO notes VALUES (20, 'still here')");
    // zone-a and zone-b went bad in the test before.
    const zoneC = zoneFile('zone-c', 'app-db', second);
    await writeFile(zoneC, (await readFile(zoneC)).subarray(0, 3000));
    const restoreId = ids('op');

    await call('PUT', `/v1/instances/app-db/restores/${restoreId}`, { mode: 'in_place', source: { databaseId: 'app-db', backupId: second, dataKey } });

    const job = await restoreDone('app-db', restoreId);
    expect(job.status).toBe('failed');
    expect(job.reason).toContain(`backup ${second}`);
    expect((await running('app-db')).port).toBe(port);
    expect(await query(port, 'SELECT id FROM notes ORDER BY id')).toEqual([{ id: 1 }, { id: 2 }, { id: 20 }]);
  }, 120_000);

  it('fails the next restore when a restore fault is armed, before touching the instance', async () => {
    await call('PUT', '/v1/faults', { operation: 'restore', instanceId: 'app-db', message: 'not today' });
    const restoreId = ids('op');

    await call('PUT', `/v1/instances/app-db/restores/${restoreId}`, { mode: 'in_place', source: { databaseId: 'app-db', backupId: first, dataKey } });

    expect(await restoreDone('app-db', restoreId)).toMatchObject({ status: 'failed', reason: 'not today' });
    expect(await query(port, 'SELECT count(*)::int AS n FROM notes')).toEqual([{ n: 3 }]);
  }, 120_000);

  it('backs up and restores PostgreSQL 14 (the pre-15 backup functions), in place and into a new instance', async () => {
    const host = HostInfo.parse((await call('GET', '/v1/host')).body);
    const version = host.versions.find((v) => v.version.startsWith('14.'))!.version;
    const oldKey = { version: 1, wrapped: await newWrappedDataKey(wrapper, 'old-db') };
    await call('PUT', '/v1/instances/old-db', { ...spec, version, dataKey: oldKey });
    const oldPort = (await running('old-db')).port;
    await query(oldPort, "CREATE TABLE t AS SELECT 'before' AS v");
    const backupId = ids('bk');
    await call('PUT', `/v1/instances/old-db/backups/${backupId}`, { kind: 'manual' });
    // PostgreSQL 15's pg_dump dumps a 14 server too.
    expect(await backupDone('old-db', backupId)).toMatchObject({ status: 'completed', logicalDump: { copies: [{ ok: true }, { ok: true }, { ok: true }] } });
    await query(oldPort, "UPDATE t SET v = 'after'");
    const restoreId = ids('op');

    await call('PUT', `/v1/instances/old-db/restores/${restoreId}`, { mode: 'in_place', source: { databaseId: 'old-db', backupId, dataKey: oldKey } });

    expect(await restoreDone('old-db', restoreId)).toMatchObject({ status: 'completed' });
    expect(await query(oldPort, 'SELECT v FROM t')).toEqual([{ v: 'before' }]);
    // Into a new instance, whose first start recovers the backup (crash recovery from backup_label on 14 too).
    const forkId = ids('op');
    const forkSpec = { ...spec, version, dataKey: { version: 1, wrapped: await newWrappedDataKey(wrapper, 'old-fork') } };
    await call('PUT', `/v1/instances/old-fork/restores/${forkId}`, { mode: 'new', source: { databaseId: 'old-db', backupId, dataKey: oldKey }, spec: forkSpec });
    expect(await restoreDone('old-fork', forkId)).toMatchObject({ status: 'completed' });
    expect(await query((await running('old-fork')).port, 'SELECT v FROM t')).toEqual([{ v: 'before' }]);
    expect((await call('DELETE', '/v1/instances/old-fork')).status).toBe(204);
    expect((await call('DELETE', '/v1/archives/old-fork')).status).toBe(204);
    expect((await call('DELETE', '/v1/instances/old-db')).status).toBe(204);
    expect((await call('DELETE', '/v1/archives/old-db')).status).toBe(204);
  }, 120_000);

  describe('logical dumps (pg_dump where a pg_dump as new as the server exists)', () => {
    const dumpDb = 'dump-db';
    let dumpKey: WrappedKey;
    let dumpPort: number;
    const withDump = ids('bk');
    const dumpObject = (zone: string, id: string, backupId: string) => join(backupDir, zone, id, 'base', `${backupId}.dump.enc`);
    const dumpUrl = (id: string, backupId: string, format: string) => {
      const expires = Math.floor(Date.now() / 1000) + 300;
      return `${agent.url}/v1/downloads/${id}/${backupId}?expires=${expires}&signature=${downloadSignature(secret, id, backupId, expires)}&format=${format}`;
    };

    it('takes a pg_dump with the backup of a PostgreSQL 15 server, sealed into three verified copies', async () => {
      expect(existsSync(pgRestore15), `${pgRestore15} is missing: install postgresql-15 (Debian) to test logical dumps`).toBe(true);
      expect(existsSync(pgDump15), `${pgDump15} is missing: install postgresql-15 (Debian) to test logical dumps`).toBe(true);
      const host = HostInfo.parse((await call('GET', '/v1/host')).body);
      dumpKey = { version: 1, wrapped: await newWrappedDataKey(wrapper, dumpDb) };
      await call('PUT', `/v1/instances/${dumpDb}`, { ...spec, version: host.versions.find((v) => v.version.startsWith('15.'))!.version, dataKey: dumpKey });
      dumpPort = (await running(dumpDb)).port;
      await query(dumpPort, 'CREATE TABLE notes (id int PRIMARY KEY, body text)');
      await query(dumpPort, `INSERT INTO notes VALUES (1, 'kept'), (2, '${distinctive}')`);

      await call('PUT', `/v1/instances/${dumpDb}/backups/${withDump}`, { kind: 'manual' });

      const job = await backupDone(dumpDb, withDump);
      expect(job.status).toBe('completed');
      const dump = job.logicalDump!;
      expect(dump.copies.map((c) => c.zone)).toEqual(['zone-a', 'zone-b', 'zone-c']);
      expect(dump.copies.every((c) => c.ok && c.sha256 === dump.sha256)).toBe(true);
      expect(dump.sha256).not.toBe(job.sha256);
      expect(dump.compression).toBe('zstd');
      for (const zone of ['zone-a', 'zone-b', 'zone-c']) {
        const stored = await readFile(dumpObject(zone, dumpDb, withDump));
        expect(stored.length).toBe(dump.sizeBytes);
        // Sealed ("DBPE"), not a readable custom-format dump ("PGDMP", its table of contents in clear).
        expect(stored.subarray(0, 4).toString()).toBe('DBPE');
        for (const clear of ['PGDMP', 'CREATE TABLE', distinctive]) expect(stored.includes(clear)).toBe(false);
        expect(await storedMeta(zone, dumpDb, withDump)).toMatchObject({ job: { logicalDump: dump } });
      }
    }, 60_000);

    it('serves the dump with format=dump (decompressed: a plain custom-format archive): pg_restore lists the table and restores the rows into a fresh server', async () => {
      const response = await fetch(dumpUrl(dumpDb, withDump, 'dump'));

      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toBe('application/octet-stream');
      expect(response.headers.get('content-disposition')).toBe(`attachment; filename="${dumpDb}-${withDump}.dump"`);
      const dumpFile = join(tempDir, 'download.dump');
      await pipeline(Readable.fromWeb(response.body as never), (await open(dumpFile, 'w')).createWriteStream());
      const listing = execFileSync(pgRestore15, ['-l', dumpFile], { encoding: 'utf8' });
      expect(listing).toMatch(/TABLE public notes /);
      expect(listing, 'pg_dump -Z0: zstd compressed it at rest').toMatch(/^;\s+Compression: 0$/m);
      expect(execFileSync(pgRestore15, ['-f', '-', dumpFile], { encoding: 'utf8' })).toContain(`2\t${distinctive}`);
      // A fresh server (of another major: a dump restores into a newer one) gets the rows back.
      await call('PUT', '/v1/instances/dump-copy', { ...spec, dataKey: undefined });
      const copyPort = (await running('dump-copy')).port;
      execFileSync(pgRestore15, [
        '--no-owner', `--host=${join(tempDir, 'agent', 'sockets', String(copyPort))}`, `--port=${copyPort}`, '--username=dbplane_admin', '--dbname=app', dumpFile,
      ], { env: { PATH: process.env.PATH, LC_ALL: 'C.UTF-8' } });
      expect(await adminQuery(copyPort, 'SELECT id, body FROM notes ORDER BY id')).toEqual([{ id: 1, body: 'kept' }, { id: 2, body: distinctive }]);
      expect((await call('DELETE', '/v1/instances/dump-copy')).status).toBe(204);
      // The base format is still the default, and still there for the same link.
      expect((await fetch(dumpUrl(dumpDb, withDump, 'base'))).headers.get('content-type')).toBe('application/x-tar');
    }, 60_000);

    it('sends the dump as stored, with Content-Encoding: zstd, to a client that accepts zstd', async () => {
      // node:http rather than fetch: fetch would decode the body before the test sees it.
      const response = await new Promise<IncomingMessage>((resolve, reject) => {
        httpGet(dumpUrl(dumpDb, withDump, 'dump'), { headers: { 'accept-encoding': 'gzip, zstd;q=0.5' } }, resolve).once('error', reject);
      });
      const body = await buffer(response);

      expect(response.statusCode).toBe(200);
      expect(response.headers['content-encoding']).toBe('zstd');
      expect(response.headers.vary).toBe('accept-encoding');
      expect(body.subarray(0, 4)).toEqual(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])); // a zstd frame
      const dumpFile = join(tempDir, 'download-decoded.dump');
      await writeFile(dumpFile, zstdDecompressSync(body));
      expect(execFileSync(pgRestore15, ['-f', '-', dumpFile], { encoding: 'utf8' })).toContain(`2\t${distinctive}`);
      // Refused with q=0, and never for the tar: it is two archives joined when decompressed (TarJoiner).
      for (const [format, accept] of [['dump', 'zstd;q=0, gzip'], ['base', 'zstd']]) {
        const other = await fetch(dumpUrl(dumpDb, withDump, format), { headers: { 'accept-encoding': accept } });
        expect(other.headers.get('content-encoding'), `${format} with ${accept}`).toBeNull();
        await other.body?.cancel();
      }
    }, 60_000);

    it('reads Accept-Encoding as RFC 9110 does: listed, or *, and not q=0', () => {
      expect(acceptsEncoding('gzip, deflate, br, zstd', 'zstd')).toBe(true);
      expect(acceptsEncoding('ZSTD;q=0.1', 'zstd')).toBe(true);
      expect(acceptsEncoding('*', 'zstd')).toBe(true);
      expect(acceptsEncoding('zstd;q=0, *', 'zstd')).toBe(false);
      expect(acceptsEncoding('gzip, deflate', 'zstd')).toBe(false);
      expect(acceptsEncoding(undefined, 'zstd')).toBe(false);
    });

    it('fails the backup with pg_dump\'s reason when pg_dump fails, and keeps no object of it', async () => {
      const failing = ids('bk');
      await adminQuery(dumpPort, 'ALTER DATABASE app ALLOW_CONNECTIONS false', 'postgres');
      try {
        await call('PUT', `/v1/instances/${dumpDb}/backups/${failing}`, { kind: 'manual' });

        const job = await backupDone(dumpDb, failing);
        expect(job).toMatchObject({ status: 'failed', copies: [], reason: expect.stringMatching(/pg_dump failed.*not currently accepting connections/) });
        expect(job.logicalDump).toBeUndefined();
      } finally {
        await adminQuery(dumpPort, 'ALTER DATABASE app ALLOW_CONNECTIONS true', 'postgres');
      }
      for (const zone of ['zone-a', 'zone-b', 'zone-c']) {
        expect((await readdir(join(backupDir, zone, dumpDb, 'base'))).filter((n) => n.startsWith(failing))).toEqual([`${failing}.json`]);
      }
    }, 60_000);

    it('takes no pg_dump of a server newer than every pg_dump here (17), and answers 404 to format=dump', async () => {
      const job = BackupJob.parse((await call('GET', `/v1/archives/app-db/backups/${first}`)).body);

      const dump = await fetch(dumpUrl('app-db', first, 'dump'));
      const bogus = await fetch(dumpUrl('app-db', first, 'sql'));

      expect(job).toMatchObject({ status: 'completed' });
      expect(job.logicalDump).toBeUndefined();
      expect(existsSync(dumpObject('zone-a', 'app-db', first))).toBe(false);
      expect(dump.status).toBe(404);
      expect(dump.headers.get('content-type')).toBe('application/problem+json');
      expect(((await dump.json()) as { detail: string }).detail).toMatch(/has no pg_dump/);
      expect(bogus.status).toBe(400);
      expect(((await bogus.json()) as { errors: unknown[] }).errors).toEqual([expect.objectContaining({ pointer: '/query/format' })]);
    });

    it('removes the dump with its backup, in every zone', async () => {
      expect((await call('DELETE', `/v1/archives/${dumpDb}/backups/${withDump}`)).status).toBe(204);

      for (const zone of ['zone-a', 'zone-b', 'zone-c']) expect(existsSync(dumpObject(zone, dumpDb, withDump))).toBe(false);
      expect((await fetch(dumpUrl(dumpDb, withDump, 'dump'))).status).toBe(404);
      expect((await call('DELETE', `/v1/instances/${dumpDb}`)).status).toBe(204);
      expect((await call('DELETE', `/v1/archives/${dumpDb}`)).status).toBe(204);
    });
  });

  describe('WAL retention, table stats and restores past the archive', () => {
    const walDb = 'wal-db';
    let walKey: WrappedKey;
    let walPort: number;
    const keptA = ids('bk');
    const keptB = ids('bk');
    let startOfB: string;
    let pitrPort: number;
    let pitrSpec: EnsureInstance;

    it('archives with a 4 s archive_timeout (the RPO) and records where a backup starts in the WAL', async () => {
      walKey = { version: 1, wrapped: await newWrappedDataKey(wrapper, walDb) };
      await call('PUT', `/v1/instances/${walDb}`, { ...spec, dataKey: walKey });
      walPort = (await running(walDb)).port;
      await query(walPort, 'CREATE TABLE events (id int PRIMARY KEY)');
      await query(walPort, 'CREATE TABLE tags AS SELECT g AS id FROM generate_series(1, 50) g');
      await query(walPort, 'INSERT INTO events VALUES (1)');

      await call('PUT', `/v1/instances/${walDb}/backups/${keptA}`, { kind: 'manual' });

      expect(await backupDone(walDb, keptA)).toMatchObject({ status: 'completed' });
      expect(await adminQuery(walPort, 'SHOW archive_timeout')).toEqual([{ archive_timeout: '4s' }]);
      for (const zone of ['zone-a', 'zone-b', 'zone-c']) expect((await storedMeta(zone, walDb, keptA)).startWal).toMatch(/^00000001[0-9A-F]{16}$/);
    }, 60_000);

    it('prunes, in every zone, the WAL before the kept backup across timelines, and keeps timeline histories', async () => {
      // WAL on timeline 1 after A, then a restore in place to A (timeline 2), then B on timeline 2.
      await query(walPort, 'INSERT INTO events VALUES (2)');
      await switchWal(walDb, walPort);
      const toA = ids('op');
      await call('PUT', `/v1/instances/${walDb}/restores/${toA}`, { mode: 'in_place', source: { databaseId: walDb, backupId: keptA, dataKey: walKey } });
      expect(await restoreDone(walDb, toA)).toMatchObject({ status: 'completed' });
      await query(walPort, 'INSERT INTO events VALUES (3)');
      await switchWal(walDb, walPort);
      await call('PUT', `/v1/instances/${walDb}/backups/${keptB}`, { kind: 'manual' });
      expect(await backupDone(walDb, keptB)).toMatchObject({ status: 'completed' });
      startOfB = (await storedMeta('zone-a', walDb, keptB)).startWal!;
      expect(startOfB).toMatch(/^00000002[0-9A-F]{16}$/);
      const segment = /^([0-9A-F]{24})(\.partial|\.[0-9A-F]{8}\.backup|)\.(enc|json)$/;
      const before = (names: string[]) => names.filter((n) => segment.test(n) && n.slice(8, 24) < startOfB.slice(8));
      const doomed = new Set(before(await walObjects('zone-b', walDb)).map((n) => n.replace(/\.(enc|json)$/, '')));
      expect([...doomed].some((n) => n.startsWith('00000001'))).toBe(true);

      const pruned = await call('POST', `/v1/archives/${walDb}/wal-retention`, { keepFromBackupId: keptB });

      expect(pruned.status).toBe(200);
      expect(WalRetentionResult.parse(pruned.body)).toEqual({ removed: doomed.size });
      for (const zone of ['zone-a', 'zone-b', 'zone-c']) {
        const left = await walObjects(zone, walDb);
        expect(before(left)).toEqual([]);
        expect(left).toEqual(expect.arrayContaining([`${startOfB}.enc`, `${startOfB}.json`, '00000002.history.enc', '00000002.history.json']));
      }
      expect((await call('POST', `/v1/archives/${walDb}/wal-retention`, { keepFromBackupId: keptB })).body).toEqual({ removed: 0 });
    }, 120_000);

    it('finds the start of a backup recorded without it in its backup_label, and records it', async () => {
      const recorded = (await storedMeta('zone-a', walDb, keptA)).startWal;
      for (const zone of ['zone-a', 'zone-b', 'zone-c']) {
        const { startWal: _, ...rest } = await storedMeta(zone, walDb, keptA);
        await writeFile(join(backupDir, zone, walDb, 'base', `${keptA}.json`), JSON.stringify(rest));
      }

      const pruned = await call('POST', `/v1/archives/${walDb}/wal-retention`, { keepFromBackupId: keptA });

      expect(pruned).toMatchObject({ status: 200, body: { removed: 0 } });
      expect((await storedMeta('zone-c', walDb, keptA)).startWal).toBe(recorded);
    }, 60_000);

    it('refuses to prune from a backup that is unknown (404) or did not complete (409)', async () => {
      const failing = ids('bk');
      await call('PUT', '/v1/faults', { operation: 'backup', instanceId: walDb, message: 'no' });
      await call('PUT', `/v1/instances/${walDb}/backups/${failing}`, { kind: 'manual' });
      expect(await backupDone(walDb, failing)).toMatchObject({ status: 'failed' });

      const unknown = await call('POST', `/v1/archives/${walDb}/wal-retention`, { keepFromBackupId: ids('bk') });
      const failed = await call('POST', `/v1/archives/${walDb}/wal-retention`, { keepFromBackupId: failing });
      const invalid = await call('POST', `/v1/archives/${walDb}/wal-retention`, { keepFromBackupId: 'latest' });

      expect([unknown.status, failed.status, invalid.status]).toEqual([404, 409, 400]);
      expect(invalid.body.errors).toEqual([expect.objectContaining({ pointer: '/body/keepFromBackupId' })]);
    });

    it('still restores the kept backup to a point in time after it, once older WAL is gone', async () => {
      await query(walPort, 'INSERT INTO events VALUES (4)');
      const [{ at }] = await query<{ at: string }>(walPort, `SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at`);
      await query(walPort, 'INSERT INTO events VALUES (5)');
      const restoreId = ids('op');

      await call('PUT', `/v1/instances/wal-pitr/restores/${restoreId}`, {
        mode: 'new', source: { databaseId: walDb, backupId: keptB, dataKey: walKey }, pointInTime: at,
        spec: pitrSpec = { ...spec, dataKey: { version: 1, wrapped: await newWrappedDataKey(wrapper, 'wal-pitr') } },
      } satisfies StartRestore);

      expect(await restoreDone('wal-pitr', restoreId)).toMatchObject({ status: 'completed', recoveredTo: at });
      pitrPort = (await running('wal-pitr')).port;
      expect(await query(pitrPort, 'SELECT id FROM events ORDER BY id')).toEqual([{ id: 1 }, { id: 3 }, { id: 4 }]);
    }, 120_000);

    it('counts the rows of every user table of an instance', async () => {
      const stats = await call('GET', '/v1/instances/wal-pitr/tables');

      expect(stats.status).toBe(200);
      expect(TableStats.parse(stats.body)).toEqual({
        tables: [
          { database: 'app', schema: 'public', name: 'events', rows: 3 },
          { database: 'app', schema: 'public', name: 'tags', rows: 50 },
        ],
        totalRows: 53,
      });
      expect((await call('GET', '/v1/instances/nowhere-db/tables')).status).toBe(404);
    });

    it('answers 422 naming a table whose pages cannot be read', async () => {
      await query(pitrPort, 'CREATE TABLE broken AS SELECT g AS id FROM generate_series(1, 100) g');
      const [{ file }] = await adminQuery<{ file: string }>(pitrPort, "SELECT pg_relation_filepath('broken') AS file");
      await adminQuery(pitrPort, 'CHECKPOINT');
      // A restart empties shared buffers: the next read of the table comes from the file.
      await call('PUT', '/v1/instances/wal-pitr', { ...pitrSpec, settings: { ...pitrSpec.settings, work_mem: '5MB' } });
      await running('wal-pitr');
      const path = join(tempDir, 'agent', 'instances', 'wal-pitr', 'data', file);
      const handle = await open(path, 'r+');
      await handle.write(Buffer.alloc(8, 0xff), 0, 8, 12); // pd_lower, pd_upper, pd_special, pd_pagesize_version of page 0
      await handle.close();

      const stats = await call('GET', '/v1/instances/wal-pitr/tables');

      expect(stats.status).toBe(422);
      expect(stats.body.detail).toMatch(/table "public"\."broken" in database app could not be read: invalid page in block 0/);
      await query(pitrPort, 'DROP TABLE broken');
    }, 60_000);

    it('restores the kept backup in place, once older WAL is gone', async () => {
      const restoreId = ids('op');

      await call('PUT', `/v1/instances/${walDb}/restores/${restoreId}`, { mode: 'in_place', source: { databaseId: walDb, backupId: keptB, dataKey: walKey } });

      expect(await restoreDone(walDb, restoreId)).toMatchObject({ status: 'completed' });
      expect(await query(walPort, 'SELECT id FROM events ORDER BY id')).toEqual([{ id: 1 }, { id: 3 }]);
    }, 120_000);

    it('restores to the end of the archive when the target is past it and the source is gone (host lost)', async () => {
      await query(walPort, 'INSERT INTO events VALUES (6)');
      const [{ committed }] = await query<{ committed: Date }>(walPort, 'SELECT clock_timestamp() AS committed');
      await switchWal(walDb, walPort);
      expect((await call('DELETE', `/v1/instances/${walDb}`)).status).toBe(204);
      const restoreId = ids('op');
      const now = new Date().toISOString();

      await call('PUT', `/v1/instances/wal-end/restores/${restoreId}`, {
        mode: 'new', source: { databaseId: walDb, backupId: keptB, dataKey: walKey }, pointInTime: now,
        spec: { ...spec, dataKey: { version: 1, wrapped: await newWrappedDataKey(wrapper, 'wal-end') } },
      } satisfies StartRestore);

      const job = await restoreDone('wal-end', restoreId);
      expect(job.status).toBe('completed');
      // The last commit replayed: row 6's, a moment before clock_timestamp() read after it.
      expect(Date.parse(job.recoveredTo!)).toBeLessThanOrEqual(committed.getTime());
      expect(Date.parse(job.recoveredTo!)).toBeGreaterThan(committed.getTime() - 5_000);
      expect(await query((await running('wal-end')).port, 'SELECT id FROM events ORDER BY id')).toEqual([{ id: 1 }, { id: 3 }, { id: 6 }]);
      for (const id of ['wal-pitr', 'wal-end']) expect((await call('DELETE', `/v1/instances/${id}`)).status).toBe(204);
      for (const id of [walDb, 'wal-pitr', 'wal-end']) expect((await call('DELETE', `/v1/archives/${id}`)).status).toBe(204);
    }, 120_000);
  });

  it('keeps backup jobs across an agent restart; one that was running reads back as failed', async () => {
    const interrupted = ids('bk');
    const recordedRunning = {
      job: { id: interrupted, databaseId: 'app-db', status: 'running', startedAt: new Date().toISOString(), copies: [] },
      kind: 'manual', version: spec.version, wrappedKey: dataKey,
    };
    for (const zone of ['zone-a', 'zone-b', 'zone-c']) {
      await writeFile(join(backupDir, zone, 'app-db', 'base', `${interrupted}.json`), JSON.stringify(recordedRunning));
    }
    await agent.stop();

    agent = await spawnAgent({ dataDir: join(tempDir, 'agent'), secret, faults: true, masterKeyFile: join(tempDir, 'master.key'), backupDir });

    expect((await call('GET', `/v1/archives/app-db/backups/${first}`)).body).toMatchObject({ status: 'completed' });
    expect((await call('GET', `/v1/archives/app-db/backups/${interrupted}`)).body).toMatchObject({ status: 'failed', reason: expect.stringMatching(/interrupted/) });
    // The restarted server archives through the agent's new port: a backup waits for that.
    await running('app-db');
    const after = ids('bk');
    await call('PUT', `/v1/instances/app-db/backups/${after}`, { kind: 'manual' });
    expect(await backupDone('app-db', after)).toMatchObject({ status: 'completed' });
  }, 120_000);

  it('purges an archive', async () => {
    expect((await call('DELETE', '/v1/instances/pitr-db')).status).toBe(204);
    expect((await call('DELETE', '/v1/archives/pitr-db')).status).toBe(204);

    expect((await call('GET', '/v1/archives/pitr-db')).body).toEqual({ databaseId: 'pitr-db', walSegments: 0 });
    await expect(stat(join(backupDir, 'zone-a', 'pitr-db'))).rejects.toThrow(/ENOENT/);
  });
});
