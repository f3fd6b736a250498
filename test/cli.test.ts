import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dbplane, type Run, succeeded } from './helpers/cli.ts';
import { normalizeApiUrl } from '../cli/config.ts';
import { startRuntime } from '../local/runtime.ts';

/** The CLI as a user runs it: a child process through cli/bin.mjs, its config file in a temp folder. */


const provisioningTimeout = 180_000;

describe('dbplane CLI against the local runtime', () => {
  let runtime: Awaited<ReturnType<typeof startRuntime>>;
  let tempDirs: string[] = [];
  /** The account's config file, written by `login`; in a folder the CLI has to create. */
  let configFile: string;
  let accountToken: string;

  async function tempDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'dbplane-cli-'));
    tempDirs.push(dir);
    return dir;
  }

  /** Runs as the logged-in account. */
  function cli(...args: string[]): Promise<Run> {
    return dbplane(args, { DBPLANE_CONFIG: configFile });
  }

  beforeAll(async () => {
    runtime = await startRuntime({ dataDir: await tempDir(), port: 0 });
    configFile = join(await tempDir(), 'dbplane', 'config.json');
    const admin = { DBPLANE_CONFIG: join(await tempDir(), 'config.json'), DBPLANE_API_URL: runtime.apiUrl, DBPLANE_TOKEN: runtime.adminToken };
    const account = JSON.parse(succeeded(await dbplane(['admin', 'accounts', 'create', 'acme', '--json'], admin)).stdout) as { id: string };
    const token = JSON.parse(succeeded(await dbplane(['admin', 'tokens', 'create', account.id, '--name', 'cli-test', '--json'], admin)).stdout) as { token: string; scopes: string[] };
    expect(token.scopes).toEqual(['databases']);
    accountToken = token.token;
  });

  afterAll(async () => {
    await runtime?.stop();
    await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
    tempDirs = [];
  });

  it('exits 2 on a usage error', async () => {
    const run = await dbplane(['databases', 'create', 'shop', '--engine', 'postgresql'], { DBPLANE_CONFIG: configFile });

    expect(run.code).toBe(2);
    expect(run.stderr).toContain("required option '--plan <plan>' not specified");
  });

  it('exits 1 with the 401 problem when no token is configured', async () => {
    const run = await dbplane(['databases', 'list', '--api-url', runtime.apiUrl], { DBPLANE_CONFIG: join(await tempDir(), 'config.json') });

    expect(run.code).toBe(1);
    expect(run.stderr).toContain('(HTTP 401)');
  });

  it('refuses to log in with a token the API rejects, and saves nothing', async () => {
    const config = join(await tempDir(), 'config.json');

    const run = await dbplane(['login', '--api-url', runtime.apiUrl, '--token', 'not-a-token'], { DBPLANE_CONFIG: config });

    expect(run.code).toBe(1);
    expect(run.stderr).toContain('(HTTP 401)');
    await expect(stat(config)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('logs in and saves the API URL and token readable by the user only', async () => {
    succeeded(await cli('login', '--api-url', runtime.apiUrl, '--token', accountToken));

    expect((await stat(configFile)).mode & 0o777).toBe(0o600);
    expect((await stat(join(configFile, '..'))).mode & 0o777).toBe(0o700);
    expect(JSON.parse(await readFile(configFile, 'utf8'))).toMatchObject({ apiUrl: normalizeApiUrl(runtime.apiUrl), token: accountToken });
  });

  it('shows the plans and engines', async () => {
    const plans = succeeded(await cli('plans'));
    const engines = succeeded(await cli('engines', '--json'));

    expect(plans.stdout).toMatch(/^starter-512\s+starter\s+1\s+512MB/m);
    expect(JSON.parse(engines.stdout).engines[0].engine).toBe('postgresql');
  });

  it('rejects an unknown plan with the field pointer on stderr', async () => {
    const run = await cli('databases', 'create', 'shop', '--engine', 'postgresql', '--plan', 'huge-1');

    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^ {2}\/(body\/)?plan: /m);
  });

  describe('a database from creation to deletion', () => {
    let databaseId: string;

    it('creates a database, printing the password once and each step as it runs', async () => {
      const run = succeeded(await cli('databases', 'create', 'shop', '--engine', 'postgresql', '--plan', 'starter-512', '--wait'));

      expect(run.stdout).toMatch(/^password: +\S+ +\(shown once/m);
      expect(run.stdout).toMatch(/^ {2}-> \S+/m);
      expect(run.stdout).toMatch(/^ {2}ok \S.* \d+(\.\d+)?(ms|s)$/m);
      expect(run.stdout).toMatch(/^operation op-\S+ succeeded in /m);
      expect(run.stdout).toMatch(/^url: postgresql:\/\/[^:]+:[^@]+@/m);
      databaseId = /^id: +(db-\S+)$/m.exec(run.stdout)?.[1] ?? '';
      expect(databaseId).not.toBe('');
    }, provisioningTimeout);

    it('prints a connection URL that PostgreSQL accepts', async () => {
      const url = succeeded(await cli('databases', 'url', 'shop')).stdout.trim();

      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        const result = await client.query<{ one: number }>('select 1 as one');
        expect(result.rows).toEqual([{ one: 1 }]);
      } finally {
        await client.end();
      }
    });

    it('prints the URL without a password, and exits 1, where the password was not saved', async () => {
      const elsewhere = { DBPLANE_CONFIG: join(await tempDir(), 'config.json'), DBPLANE_API_URL: runtime.apiUrl, DBPLANE_TOKEN: accountToken };

      const run = await dbplane(['databases', 'url', 'shop'], elsewhere);

      expect(run.code).toBe(1);
      expect(run.stdout).toMatch(/^postgresql:\/\/[^:@]+@[^/]+\/\S+\n$/);
      expect(run.stderr).toContain('no password for shop');
    });

    it('lists and shows the database, as a table or as JSON', async () => {
      const list = succeeded(await cli('databases', 'list'));
      const show = succeeded(await cli('databases', 'show', 'shop'));
      const json = succeeded(await cli('databases', 'show', databaseId, '--json'));

      expect(list.stdout).toMatch(/^NAME\s+ID\s+ENGINE/);
      expect(list.stdout).toMatch(new RegExp(`^shop\\s+${databaseId}\\s+postgresql\\s+\\S+\\s+starter-512\\s+running`, 'm'));
      expect(show.stdout).toMatch(/^status: +running$/m);
      expect(JSON.parse(json.stdout)).toMatchObject({ id: databaseId, name: 'shop', status: 'running', plan: 'starter-512' });
    });

    it('lists the operations and shows one with its steps', async () => {
      const list = succeeded(await cli('operations', 'list', 'shop', '--json'));
      const [provision] = JSON.parse(list.stdout).operations as { id: string; kind: string; status: string }[];
      const show = succeeded(await cli('operations', 'show', provision.id));

      expect(provision).toMatchObject({ kind: 'provision', status: 'succeeded' });
      expect(show.stdout).toMatch(/^STEP\s+STATUS\s+ATTEMPTS/m);
      expect(show.stdout).toMatch(/\ssucceeded\s+1\s/);
    });

    it("shows the database's audit trail", async () => {
      const run = succeeded(await cli('databases', 'events', 'shop', '--json'));

      expect(JSON.parse(run.stdout).events.length).toBeGreaterThan(0);
    });

    it('deletes the database, waits for it, and forgets its password', async () => {
      const run = succeeded(await cli('databases', 'delete', 'shop', '--wait'));
      const show = await cli('databases', 'show', 'shop');

      expect(run.stdout).toMatch(/^operation op-\S+ succeeded in /m);
      expect(show.code).toBe(1);
      expect(show.stderr).toContain('(HTTP 404)');
      const config = JSON.parse(await readFile(configFile, 'utf8'));
      expect(config.credentials[normalizeApiUrl(runtime.apiUrl)] ?? {}).not.toHaveProperty(databaseId);
    }, provisioningTimeout);
  });
});
