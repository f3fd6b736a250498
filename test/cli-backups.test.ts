import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dbplane, type Run, succeeded } from './helpers/cli.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/** `dbplane backups` as a user runs it: a child process through cli/bin.mjs against the local runtime. */


async function withClient<T>(url: string, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end();
  }
}

const operationTimeout = 240_000;

describe('dbplane backups against the local runtime', () => {
  let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
  let tempDirs: string[] = [];
  let env: Record<string, string>;

  async function tempDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'dbplane-cli-backups-'));
    tempDirs.push(dir);
    return dir;
  }

  function cli(...args: string[]): Promise<Run> {
    return dbplane(args, env);
  }

  /** When a --wait fails, the operation's steps say whether the CLI or the service is at fault. */
  async function explained(run: Run): Promise<Run> {
    if (run.code === 0) return run;
    const operationId = /operation (op-\S+)/.exec(run.stderr + run.stdout)?.[1];
    const details = operationId ? (await cli('operations', 'show', operationId)).stdout : '';
    throw new Error(`dbplane exited ${run.code}:\n${run.stdout}\n${run.stderr}\n${details}`);
  }

  beforeAll(async () => {
    runtime = await startTestRuntime();
    const admin = { DBPLANE_CONFIG: join(await tempDir(), 'config.json'), DBPLANE_API_URL: runtime.apiUrl, DBPLANE_TOKEN: runtime.adminToken };
    const account = JSON.parse(succeeded(await dbplane(['admin', 'accounts', 'create', 'acme', '--json'], admin)).stdout) as { id: string };
    const token = JSON.parse(succeeded(await dbplane(['admin', 'tokens', 'create', account.id, '--name', 'cli-backups', '--json'], admin)).stdout) as { token: string };
    env = { DBPLANE_CONFIG: join(await tempDir(), 'config.json') };
    succeeded(await cli('login', '--api-url', runtime.apiUrl, '--token', token.token));
    succeeded(await cli('databases', 'create', 'shop', '--engine', 'postgresql', '--plan', 'starter-512', '--wait'));
  }, operationTimeout);

  afterAll(async () => {
    await runtime?.stop();
    await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
    tempDirs = [];
  });

  it('exits 2 when a restore names both a backup and an instant', async () => {
    const run = await cli('backups', 'restore', 'shop', '--backup', 'bk-1', '--time', '2025-01-31T12:00:00Z');

    expect(run.code).toBe(2);
    expect(run.stderr).toContain("'--backup <id>' cannot be used with option '--time <instant>'");
  });

  it('exits 2 when a restore names neither a backup nor an instant', async () => {
    const run = await cli('backups', 'restore', 'shop', '--into-new', 'shop-copy');

    expect(run.code).toBe(2);
    expect(run.stderr).toContain("give either '--backup <id>' or '--time <instant>'");
  });

  it('exits 1 with the field pointer when the API rejects the backup hour', async () => {
    const run = await cli('backups', 'schedule', 'shop', '--hour', '25');

    expect(run.code).toBe(1);
    expect(run.stderr).toContain('(HTTP 400)');
    expect(run.stderr).toMatch(/^ {2}\/(body\/)?hour: /m);
  });

  it('sets the backup hour, which the database then shows', async () => {
    const run = succeeded(await cli('backups', 'schedule', 'shop', '--hour', '5', '--daily-retention', '2'));
    const show = succeeded(await cli('databases', 'show', 'shop', '--json'));

    expect(run.stdout).toMatch(/^daily backup: +05:00 UTC$/m);
    expect(JSON.parse(show.stdout)).toMatchObject({ backupHour: 5, backupRetention: { dailyRetention: 2 } });
  });

  it('lists no backups of a fresh database, with the header', async () => {
    const run = succeeded(await cli('backups', 'list', 'shop'));

    expect(run.stdout).toBe('ID  KIND  STATUS  SIZE  CONSISTENT AT  COPIES  EXPIRES\n');
  });

  it('shows an empty recovery window before the first backup', async () => {
    const run = succeeded(await cli('backups', 'window', 'shop', '--json'));

    expect(JSON.parse(run.stdout)).toEqual({});
  });

  describe('a backup from creation to a restore into a new database', () => {
    let backupId: string;

    it('writes a row the backup will hold', async () => {
      const url = succeeded(await cli('databases', 'url', 'shop')).stdout.trim();

      await withClient(url, async (client) => {
        await client.query('create table orders (id int primary key, item text)');
        await client.query("insert into orders values (1, 'teapot')");
      });
    });

    it('takes a backup and waits for it', async () => {
      const run = await explained(await cli('backups', 'create', 'shop', '--wait'));

      expect(run.stdout).toMatch(/^operation op-\S+ succeeded in /m);
      expect(run.stdout).toMatch(/^status: +completed$/m);
      backupId = /^id: +(bk-\S+)$/m.exec(run.stdout)?.[1] ?? '';
      expect(backupId).not.toBe('');
    }, operationTimeout);

    it('lists the backup as completed with all three copies', async () => {
      const run = succeeded(await cli('backups', 'list', 'shop'));
      const json = JSON.parse(succeeded(await cli('backups', 'list', 'shop', '--json')).stdout) as { backups: { id: string; copies: unknown[] }[] };

      expect(run.stdout).toMatch(new RegExp(`^${backupId}\\s+manual\\s+completed\\s+\\d+(\\.\\d)? (B|KiB|MiB|GiB)\\s+\\S+\\s+3/3 ok\\s+\\S+$`, 'm'));
      expect(json.backups.find((b) => b.id === backupId)?.copies).toHaveLength(3);
    });

    it('shows the backup and a recovery window that starts with it', async () => {
      const show = succeeded(await cli('backups', 'show', 'shop', backupId, '--json'));
      const window = succeeded(await cli('backups', 'window', 'shop', '--json'));

      const backup = JSON.parse(show.stdout) as { status: string; consistentAt: string };
      expect(backup.status).toBe('completed');
      expect(JSON.parse(window.stdout)).toMatchObject({ earliest: backup.consistentAt, latest: expect.any(String) });
    });

    it('downloads the backup as a tar archive of the data directory', async () => {
      const dir = await tempDir();
      const file = join(dir, 'shop.tar');

      const run = succeeded(await cli('backups', 'download', 'shop', backupId, '--output', file));

      expect(run.stdout).toMatch(new RegExp(`^wrote ${file} \\(\\d+(\\.\\d)? (B|KiB|MiB|GiB)\\)$`, 'm'));
      expect((await stat(file)).size).toBeGreaterThan(0);
      const { stdout: listing } = await promisify(execFile)('tar', ['-tf', file], { maxBuffer: 64 * 1024 * 1024 });
      const entries = listing.split('\n').map((entry) => entry.replace(/^\.\//, ''));
      expect(entries).toContain('PG_VERSION');
      expect(entries).toContain('backup_label');
    }, operationTimeout);

    it('downloads to <database>-<backupId>.tar by default', async () => {
      const dir = await tempDir();

      succeeded(await dbplane(['backups', 'download', 'shop', backupId], env, dir));

      expect((await stat(join(dir, `shop-${backupId}.tar`))).size).toBeGreaterThan(0);
    }, operationTimeout);

    it('prints only the signed URL with --url-only', async () => {
      const run = succeeded(await cli('backups', 'download', 'shop', backupId, '--url-only'));

      expect(run.stdout).toMatch(/^https?:\/\/\S+\n$/);
    });

    it('restores the backup into a new database that has the row', async () => {
      const run = await explained(await cli('backups', 'restore', 'shop', '--backup', backupId, '--into-new', 'shop-copy', '--wait'));
      const url = succeeded(await cli('databases', 'url', 'shop-copy')).stdout.trim();

      expect(run.stdout).toMatch(/^password: +\S+ +\(shown once/m);
      expect(run.stdout).toMatch(/^operation op-\S+ succeeded in /m);
      const rows = await withClient(url, async (client) => (await client.query('select id, item from orders')).rows);
      expect(rows).toEqual([{ id: 1, item: 'teapot' }]);
    }, operationTimeout);
  });

  describe('a backup of PostgreSQL 15, which this host can pg_dump', () => {
    it('downloads its pg_dump, received zstd-compressed (the CLI asks for it), as an archive pg_restore reads', async () => {
      succeeded(await cli('databases', 'create', 'dumped', '--engine', 'postgresql', '--version', '15', '--plan', 'starter-512', '--wait'));
      await withClient(succeeded(await cli('databases', 'url', 'dumped')).stdout.trim(), async (client) => {
        await client.query('create table invoices (id int primary key, total numeric)');
        await client.query('insert into invoices values (7, 12.50)');
      });
      const created = await explained(await cli('backups', 'create', 'dumped', '--wait'));
      const backupId = /^id: +(bk-\S+)$/m.exec(created.stdout)?.[1] ?? '';
      const file = join(await tempDir(), 'dumped.dump');

      const run = succeeded(await cli('backups', 'download', 'dumped', backupId, '--output', file, '--json'));

      expect(JSON.parse(run.stdout)).toMatchObject({ path: file, format: 'pg_dump', contentEncoding: 'zstd' });
      const { stdout: contents } = await promisify(execFile)('/usr/lib/postgresql/15/bin/pg_restore', ['--list', file]);
      expect(contents).toMatch(/TABLE DATA public invoices/);
    }, operationTimeout);
  });
});
