import { readdirSync, readFileSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient } from './helpers/api.ts';
import { startService } from './helpers/service.ts';

/** Stop, kill and start the service again on the same data folder. */

let dataDir: string;
let service: Awaited<ReturnType<typeof startService>> | undefined;

/** Every process on the machine whose command line or environment names the data folder. */
function processesUsing(folder: string): number[] {
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
    try {
      return ['cmdline', 'environ'].some((f) => readFileSync(`/proc/${pid}/${f}`, 'utf8').includes(folder));
    } catch {
      return false;
    }
  });
}

beforeAll(() => {
  dataDir = mkdtempSync(join(tmpdir(), 'dbplane-restart-'));
});

afterAll(async () => {
  await service?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('the service across restarts', () => {
  it('keeps databases, tokens and operations, and runs the servers again', async () => {
    service = await startService(dataDir);
    expect(statSync(join(dataDir, 'admin.token')).mode & 0o777).toBe(0o600);
    const firstToken = service.adminToken;
    let api = apiClient(service.apiUrl, firstToken);
    const created = await api.post('/databases', { name: 'durable', engine: 'postgresql', plan: 'starter-512' });
    expect(created.status).toBe(202);
    expect((await api.waitForOperation(created.body.operation.id)).status).toBe('succeeded');
    const { body: database } = await api.get('/databases/durable');
    const url = new URL(database.url);
    url.password = created.body.password;
    const client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
    await client.query("create table notes (body text); insert into notes values ('kept')");
    await client.end();

    await service.stop();
    expect(processesUsing(dataDir)).toEqual([]);

    service = await startService(dataDir);
    expect(service.adminToken).toBe(firstToken);
    api = apiClient(service.apiUrl, firstToken);
    expect((await api.get('/databases/durable')).body.status).toBe('running');
    expect((await api.get(`/operations/${created.body.operation.id}`)).body.status).toBe('succeeded');
    const again = new pg.Client({ connectionString: url.toString() });
    await again.connect();
    expect((await again.query('select body from notes')).rows).toEqual([{ body: 'kept' }]);
    await again.end();
  });

  it('ends a provisioning that was running when the service was killed, and releases the lock', async () => {
    service ??= await startService(dataDir);
    const api = apiClient(service.apiUrl, service.adminToken);
    const created = await api.post('/databases', { name: 'interrupted', engine: 'postgresql', plan: 'starter-512' });
    expect(created.status).toBe(202);
    await service.kill();

    service = await startService(dataDir);
    const after = apiClient(service.apiUrl, service.adminToken);
    const operation = await after.waitForOperation(created.body.operation.id, 30_000);
    expect(operation.status).toBe('failed');
    expect(operation.error).toMatch(/ExecutionLost/);
    const database = (await after.get('/databases/interrupted')).body;
    expect(database.status).toBe('failed');
    expect(database.activeOperation).toBeUndefined();
    const deleted = await after.delete('/databases/interrupted');
    expect(deleted.status).toBe(202);
    expect((await after.waitForOperation(deleted.body.operation.id)).status).toBe('succeeded');
  });
});
