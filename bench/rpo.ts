import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { ArchiveSummary, BackupJob, HostInfo, Instance, RestoreJob, type StartRestore } from '#core/agent-api.ts';
import { LocalKeyWrapper, newWrappedDataKey } from '#core/keys.ts';
import { spawnAgent, type AgentProcess } from '../agent/spawn.ts';
import { agentCaller, appInstanceSpec, eventually } from '../test/helpers/agent.ts';

/**
 * `npx tsx bench/rpo.ts`: the recovery point objective when a host is lost. One agent runs a database
 * (PostgreSQL 17, WAL archived with archive_timeout = 4 s) and takes a base backup; a client then
 * inserts rows one by one for RPO_SECONDS (default 30), recording each acknowledged one; then the
 * agent's whole process group (agent, postgres, archive_command) is SIGKILLed. A new agent, on a
 * fresh data folder but the same zone folders (the "S3") and master key, restores the backup into a
 * new database at "now", and the bench counts the acknowledged rows the restore lacks.
 */

const writeSeconds = Number(process.env.RPO_SECONDS ?? 30);
const secret = 'rpo-bench-secret';
const password = 'rpo bench password';
const id = 'rpo-db';
const restoredId = 'rpo-restored';

const tempDir = await mkdtemp(join(tmpdir(), 'dbplane-bench-rpo-'));
const backupDir = join(tempDir, 'backups');
const masterKeyFile = join(tempDir, 'master.key');
let agent: AgentProcess | undefined;
const call = agentCaller(() => agent!, secret);
const lines: string[] = [];

const running = (instanceId: string) => eventually(async () => {
  const instance = Instance.parse((await call('GET', `/v1/instances/${instanceId}`)).body);
  return instance.status === 'running' ? instance : undefined;
}, 60_000);

async function connect(port: number): Promise<pg.Client> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'app', password, database: 'app' });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

try {
  const wrapper = LocalKeyWrapper.fromFile(masterKeyFile);
  agent = await spawnAgent({ dataDir: join(tempDir, 'host-1'), secret, masterKeyFile, backupDir });
  const host = HostInfo.parse((await call('GET', '/v1/host')).body);
  const spec = appInstanceSpec(host, password, {
    settings: { shared_buffers: '64MB', max_connections: '20' },
    dataKey: { version: 1, wrapped: await newWrappedDataKey(wrapper, id) },
  });
  await call('PUT', `/v1/instances/${id}`, spec);
  const { port } = await running(id);
  const setup = await connect(port);
  await setup.query('CREATE TABLE writes (id bigint PRIMARY KEY, at timestamptz NOT NULL)');
  await setup.end();

  const backupId = `bk-${'0'.repeat(20)}rpo001`;
  await call('PUT', `/v1/instances/${id}/backups/${backupId}`, { kind: 'manual' });
  const backup = await eventually(async () => {
    const job = BackupJob.parse((await call('GET', `/v1/archives/${id}/backups/${backupId}`)).body);
    return job.status === 'running' ? undefined : job;
  }, 120_000);
  if (backup.status !== 'completed') throw new Error(`the base backup failed: ${backup.reason}`);

  // A segment archive_timeout forces out after a single small write: 16 MiB, nearly all zero padding.
  const walDir = join(backupDir, 'zone-a', id, 'wal');
  const segmentMetas = async () => (await readdir(walDir)).filter((n) => /^[0-9A-F]{24}\.json$/.test(n));
  const archivedBefore = new Set(await segmentMetas());
  const nudge = await connect(port);
  const nudgedAt = Date.now();
  await nudge.query('INSERT INTO writes VALUES (0, clock_timestamp())');
  await nudge.end();
  const idleSegment = await eventually(async () => {
    const name = (await segmentMetas()).find((n) => !archivedBefore.has(n));
    if (!name) return undefined;
    return JSON.parse(await readFile(join(walDir, name), 'utf8')) as { sizeBytes: number; archivedAt: string };
  }, 30_000);
  const idleSeconds = (Date.parse(idleSegment.archivedAt) - nudgedAt) / 1000;

  // Rows one by one, each its own transaction (synchronous_commit on): acknowledged = committed on the host.
  const acknowledged: { id: number; at: Date }[] = [];
  const writer = await connect(port);
  const writeStart = Date.now();
  let killedAt = 0;
  const writing = (async () => {
    for (let n = 1; ; n++) {
      try {
        const { rows: [row] } = await writer.query<{ at: Date }>('INSERT INTO writes VALUES ($1, clock_timestamp()) RETURNING at', [n]);
        acknowledged.push({ id: n, at: row!.at });
      } catch {
        return; // the host is gone
      }
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, writeSeconds * 1000));

  // The host is lost: agent, postgres and any archive_command in flight die at once; the zone folders stay.
  process.kill(-agent.pid, 'SIGKILL');
  killedAt = Date.now();
  await writing;
  await writer.end().catch(() => undefined);
  agent = undefined;

  // Another host: a fresh data folder, the same "S3" and master key.
  agent = await spawnAgent({ dataDir: join(tempDir, 'host-2'), secret, masterKeyFile, backupDir });
  const summary = ArchiveSummary.parse((await call('GET', `/v1/archives/${id}`)).body);
  const pointInTime = new Date().toISOString();
  const restoreId = `op-${'0'.repeat(20)}rpo001`;
  const restoreStart = Date.now();
  const restoreCall = await call('PUT', `/v1/instances/${restoredId}/restores/${restoreId}`, {
    mode: 'new', source: { databaseId: id, backupId, dataKey: spec.dataKey! }, pointInTime,
    spec: { ...spec, dataKey: { version: 1, wrapped: await newWrappedDataKey(wrapper, restoredId) } },
  } satisfies StartRestore);
  if (restoreCall.status !== 202) throw new Error(`the restore was refused: ${JSON.stringify(restoreCall.body)}`);
  const restore = await eventually(async () => {
    const job = RestoreJob.parse((await call('GET', `/v1/instances/${restoredId}/restores/${restoreId}`)).body);
    return job.status === 'running' ? undefined : job;
  }, 600_000);
  if (restore.status !== 'completed') throw new Error(`the restore failed: ${restore.reason}`);
  const restoreMs = Date.now() - restoreStart;

  const restored = await connect((await running(restoredId)).port);
  const { rows: [found] } = await restored.query<{ count: string; maxid: string | null; newest: Date | null }>(
    'SELECT count(*) AS count, max(id) AS maxid, max(at) AS newest FROM writes');
  // Row 0 is the nudge above, not one of the measured writes.
  await restored.end();
  const restoredRows = Number(found!.count) - 1;
  const present = new Set<number>();
  if (restoredRows !== Number(found!.maxid ?? 0)) throw new Error(`the restored rows are not a prefix: ${restoredRows} rows, max id ${found!.maxid}`);
  for (let n = 1; n <= restoredRows; n++) present.add(n);
  const lost = acknowledged.filter((r) => !present.has(r.id));
  const lastAck = acknowledged.at(-1)!;
  const lostSeconds = lost.length === 0 ? 0 : (lastAck.at.getTime() - (found!.newest?.getTime() ?? writeStart)) / 1000;

  // Stored size of the segments archive_timeout forced out (16 MiB each before zstd and encryption).
  const segments: { name: string; sizeBytes: number; archivedAt: string }[] = [];
  for (const name of await segmentMetas()) {
    const meta = JSON.parse(await readFile(join(walDir, name), 'utf8')) as { sizeBytes: number; archivedAt: string };
    segments.push({ name: name.slice(0, 24), sizeBytes: meta.sizeBytes, archivedAt: meta.archivedAt });
  }
  const during = segments.filter((s) => Date.parse(s.archivedAt) >= writeStart).map((s) => s.sizeBytes).sort((a, b) => a - b);
  const kB = (bytes: number) => `${(bytes / 1024).toFixed(1)} kB`;
  const median = during[Math.floor(during.length / 2)] ?? 0;

  const cpu = cpus();
  lines.push(
    '## RPO: host lost, restore from the archive (archive_timeout = 4 s)',
    '',
    `${new Date().toISOString()} — ${cpu.length} × ${cpu[0]?.model ?? 'unknown CPU'}, node ${process.version}, PostgreSQL ${spec.version} — \`npx tsx bench/rpo.ts\` (RPO_SECONDS=${writeSeconds})`,
    '',
    '| | |',
    '|---|---|',
    `| rows acknowledged (${writeSeconds} s of single-row INSERTs, one connection) | ${acknowledged.length} (${(acknowledged.length / ((killedAt - writeStart) / 1000)).toFixed(0)}/s) |`,
    `| rows restored | ${restoredRows} |`,
    `| rows lost (acknowledged, not restored) | ${lost.length} |`,
    `| seconds of writes lost (last acknowledged insert − newest restored row) | ${lostSeconds.toFixed(2)} s |`,
    `| last WAL archived before the kill (lastWalArchivedAt) | ${summary.lastWalArchivedAt ?? 'none'}, ${summary.lastWalArchivedAt ? ((killedAt - Date.parse(summary.lastWalArchivedAt)) / 1000).toFixed(2) : '?'} s before the kill |`,
    `| restore target → recoveredTo | ${pointInTime} → ${restore.recoveredTo ?? 'unknown'} |`,
    `| restore (new agent, fresh data folder) to running | ${(restoreMs / 1000).toFixed(1)} s |`,
    `| segments archived while writing | ${during.length} |`,
    `| stored size per forced segment while writing (zstd -1, then AES-256-GCM; 16 MiB raw) | median ${kB(median)}, min ${kB(during[0] ?? 0)}, max ${kB(during.at(-1) ?? 0)} |`,
    `| stored size of a segment forced out after one single-row INSERT (idle server) | ${kB(idleSegment.sizeBytes)}, archived ${idleSeconds.toFixed(1)} s after the write |`,
    '',
    'Kill: SIGKILL to the agent\'s process group (agent, postmaster and backends, any archive_command in flight);',
    'the WAL not yet archived is lost with the host. The restore targets "now", after the last archived commit:',
    'PostgreSQL would refuse that target ("recovery ended before configured recovery target was reached"), so the',
    'agent, seeing the target at or after the newest archived WAL, replays the whole archive instead (the same',
    'state: every archived commit precedes its archiving) and reports the last replayed commit as recoveredTo.',
  );
  process.stdout.write(`${lines.join('\n')}\n`);
} finally {
  await agent?.stop().catch(() => undefined);
  await rm(tempDir, { recursive: true, force: true });
}
