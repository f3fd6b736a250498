import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostInfo, Instance, UpgradeChecks, type UpgradeCheck, type UpgradeMethod } from '#core/agent-api.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';
import { agentCaller, appInstanceSpec, eventually } from './helpers/agent.ts';

describe('pre-upgrade checks (real PostgreSQL through the agent)', () => {
  const secret = 'test-secret';
  const password = 'upgrade checks password';
  let dataDir: string;
  let agent: AgentProcess;
  let host: HostInfo;
  const call = agentCaller(() => agent, secret);
  /** The installed minors of a major, newest first. */
  const minors = (major: number) => host.versions.map((v) => v.version).filter((v) => v.startsWith(`${major}.`));
  const newest = (major: number) => minors(major)[0]!;

  const getInstance = async (id: string) => Instance.parse((await call('GET', `/v1/instances/${id}`)).body);
  const checks = async (id: string, version: string) => {
    const response = await call('GET', `/v1/instances/${id}/upgrade-checks?version=${version}`);
    expect(response.status, JSON.stringify(response.body)).toBe(200);
    return UpgradeChecks.parse(response.body).checks;
  };

  /** Runs statements one by one as the agent's admin role over the instance's socket. */
  async function admin(id: string, database: string, ...statements: string[]): Promise<pg.QueryResultRow[]> {
    const { port } = await getInstance(id);
    const client = new pg.Client({ host: join(dataDir, 'sockets', String(port)), port, user: 'dbplane_admin', database });
    await client.connect();
    try {
      let rows: pg.QueryResultRow[] = [];
      for (const sql of statements) rows = (await client.query(sql)).rows;
      return rows;
    } finally {
      await client.end();
    }
  }

  async function createInstance(id: string, version: string, settings: Record<string, string> = {}): Promise<void> {
    const spec = appInstanceSpec(host, password, { version });
    await call('PUT', `/v1/instances/${id}`, { ...spec, settings: { ...spec.settings, ...settings } });
    await eventually(async () => ((await getInstance(id)).status === 'running' ? true : undefined), 60_000);
  }

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'dbplane-upgrade-checks-'));
    agent = await spawnAgent({ dataDir, secret });
    host = HostInfo.parse((await call('GET', '/v1/host')).body);
    // On an older 16 minor, so a newer one is a minor upgrade. PostgreSQL 16 ships adminpack, which 17
    // removed; prepared transactions need max_prepared_transactions.
    await createInstance('checked-db', minors(16).at(-1)!, { max_prepared_transactions: '2' });
  }, 120_000);

  afterAll(async () => {
    // A pending prepared transaction would outlive the server: end it, so the server stops clean.
    if (agent) {
      for (const { gid, database } of await admin('checked-db', 'postgres', 'SELECT gid, database FROM pg_prepared_xacts').catch(() => [])) {
        await admin('checked-db', database, `ROLLBACK PREPARED '${gid}'`);
      }
      await agent.stop();
    }
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('reports nothing for a clean database, to a new minor or a new major', async () => {
    expect(await checks('checked-db', newest(17))).toEqual([]);
    expect(await checks('checked-db', newest(16))).toEqual([]);
  });

  it('answers 404 for an unknown instance, 422 for a version not installed here, 400 without a version', async () => {
    const unknown = await call('GET', `/v1/instances/no-such-db/upgrade-checks?version=${newest(17)}`);
    const notInstalled = await call('GET', '/v1/instances/checked-db/upgrade-checks?version=17.0');
    const missing = await call('GET', '/v1/instances/checked-db/upgrade-checks');

    expect(unknown.status).toBe(404);
    expect(notInstalled.status).toBe(422);
    expect(notInstalled.body.detail).toMatch(/17\.0 is not installed/);
    expect(missing.status).toBe(400);
    expect(missing.body.errors[0].pointer).toBe('/query/version');
  });

  it('finds what would block or spoil an upgrade, in every database', async () => {
    await admin('checked-db', 'app',
      'CREATE TABLE events (at timestamptz, body text)',
      'CREATE TABLE keyed (id int PRIMARY KEY, body text)',
      'CREATE TABLE unidentified (id int PRIMARY KEY)',
      'ALTER TABLE unidentified REPLICA IDENTITY NOTHING',
      'CREATE TABLE fully_identified (body text)',
      'ALTER TABLE fully_identified REPLICA IDENTITY FULL',
      'CREATE TABLE indexed (id int NOT NULL, body text)',
      'CREATE UNIQUE INDEX indexed_id ON indexed (id)',
      'ALTER TABLE indexed REPLICA IDENTITY USING INDEX indexed_id',
      'CREATE TABLE index_dropped (id int NOT NULL, body text)',
      'CREATE UNIQUE INDEX index_dropped_id ON index_dropped (id)',
      'ALTER TABLE index_dropped REPLICA IDENTITY USING INDEX index_dropped_id',
      'DROP INDEX index_dropped_id',
      'CREATE UNLOGGED TABLE cache (key text PRIMARY KEY, value text)',
      // regclass keeps its OIDs through pg_upgrade; regproc and regoperator do not, even in an array or a domain.
      'CREATE DOMAIN fallback_handler AS regprocedure',
      'CREATE TABLE hooks (id int PRIMARY KEY, handler regproc, operators regoperator[], fallback fallback_handler, target regclass)',
      'CREATE MATERIALIZED VIEW hook_count AS SELECT count(*) FROM hooks',
      'SELECT lo_create(0)',
      'CREATE EXTENSION adminpack',
      'BEGIN',
      "INSERT INTO keyed VALUES (1, 'pending')",
      "PREPARE TRANSACTION 'upgrade-check-pending'");
    await admin('checked-db', 'postgres', 'CREATE DATABASE other', 'CREATE DATABASE closed', 'ALTER DATABASE closed ALLOW_CONNECTIONS false');
    await admin('checked-db', 'other', 'CREATE TABLE log_lines (line text)');

    const toMajor = await checks('checked-db', newest(17));
    const toMinor = await checks('checked-db', newest(16));

    const all: UpgradeMethod[] = ['minor', 'logical', 'pg_upgrade'];
    const expected: Omit<UpgradeCheck, 'detail'>[] = [
      { id: 'prepared_transactions', severity: 'blocking', appliesTo: all, count: 1, objects: ['app: upgrade-check-pending'] },
      { id: 'invalid_databases', severity: 'blocking', appliesTo: all, count: 1, objects: ['closed'] },
      {
        id: 'tables_without_replica_identity', severity: 'blocking', appliesTo: ['logical'], count: 4,
        objects: ['app: public.events', 'app: public.index_dropped', 'app: public.unidentified', 'other: public.log_lines'],
      },
      { id: 'unavailable_extensions', severity: 'blocking', appliesTo: all, count: 1, objects: ['app: adminpack'] },
      {
        id: 'reg_columns', severity: 'blocking', appliesTo: ['pg_upgrade'], count: 3,
        objects: ['app: public.hooks.fallback', 'app: public.hooks.handler', 'app: public.hooks.operators'],
      },
      { id: 'large_objects', severity: 'blocking', appliesTo: ['logical'], count: 1, objects: ['app'] },
      { id: 'unlogged_tables', severity: 'warning', appliesTo: ['logical'], count: 1, objects: ['app: public.cache'] },
      { id: 'materialized_views', severity: 'warning', appliesTo: ['logical'], count: 1, objects: ['app: public.hook_count'] },
    ];
    expect(toMajor).toEqual(expected.map((check) => ({ ...check, detail: expect.any(String) })));
    expect(toMajor.find((c) => c.id === 'unavailable_extensions')!.detail).toMatch(/target version does not provide/);
    // The newer 16 minor still ships adminpack.
    expect(toMinor.map((c) => c.id)).toEqual(expected.map((c) => c.id).filter((id) => id !== 'unavailable_extensions'));
    // Nothing was changed: the prepared transaction is still there.
    expect(await admin('checked-db', 'postgres', 'SELECT gid FROM pg_prepared_xacts')).toEqual([{ gid: 'upgrade-check-pending' }]);
  });

  it('finds aclitem columns only from PostgreSQL 15 or older to 16 or newer', async () => {
    await createInstance('old-db', newest(15));
    await admin('old-db', 'app', 'CREATE TABLE grants (id int PRIMARY KEY, acl aclitem[])');

    const toSixteen = await checks('old-db', newest(16));
    const withinFifteen = await checks('old-db', newest(15));

    expect(toSixteen).toEqual([{
      id: 'aclitem_columns', severity: 'blocking', appliesTo: ['pg_upgrade'], count: 1, objects: ['app: public.grants.acl'], detail: expect.any(String),
    }]);
    expect(withinFifteen).toEqual([]);
  });
});
