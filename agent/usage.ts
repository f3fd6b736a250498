import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { InstanceUsage } from '#core/agent-api.ts';
import type { HostedInstance } from './backups/service.ts';
import { connectAdmin, runningInstance } from './tables.ts';

/**
 * What a plan change checks on a running server: the size of its data directory, its client
 * connections (pg_stat_activity, without the agent's own), and the live value of every setting its
 * spec manages (`current_setting`, as SHOW prints it).
 */
export async function instanceUsage(id: string, instance: HostedInstance | undefined): Promise<InstanceUsage> {
  const running = runningInstance(id, instance);
  const client = await connectAdmin(running, 'postgres');
  try {
    const { rows: [{ connections }] } = await client.query<{ connections: number }>(
      "SELECT count(*)::int AS connections FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()");
    const { rows: [{ server_version: serverVersion }] } = await client.query<{ server_version: string }>('SHOW server_version');
    const { rows } = await client.query<{ name: string; value: string }>(
      'SELECT name, current_setting(name) AS value FROM pg_settings WHERE name = ANY($1::text[]) ORDER BY name', [Object.keys(running.spec.settings)]);
    return {
      diskBytes: await directoryBytes(running.paths.data),
      connections,
      serverVersion,
      settings: Object.fromEntries(rows.map((r) => [r.name, r.value])),
    };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Bytes of every file under `dir`; files the server removes meanwhile (recycled WAL, temp files) count as gone. */
export async function directoryBytes(dir: string): Promise<number> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(ignoreMissing([]));
  const sizes = await Promise.all(entries.map(async (entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return directoryBytes(path);
    return (await lstat(path).catch(ignoreMissing(undefined)))?.size ?? 0;
  }));
  return sizes.reduce((sum, size) => sum + size, 0);
}

function ignoreMissing<T>(fallback: T) {
  return (error: NodeJS.ErrnoException): T => {
    if (error.code === 'ENOENT') return fallback;
    throw error;
  };
}
