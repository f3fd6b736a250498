import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './processes.ts';

/**
 * If the runtime was killed (SIGKILL), its children lived on. It records their pids in the data
 * folder; the next start stops those whose command or environment still names this data folder, and only those.
 */

const pidsFile = (dataDir: string) => join(dataDir, 'runtime.pids');

export function rememberProcesses(dataDir: string, pids: number[]): void {
  writeFileSync(pidsFile(dataDir), JSON.stringify(pids));
}

/** The process's command line and environment (the agent gets its data folder by environment), or undefined once gone. */
function commandLine(pid: number): string | undefined {
  try {
    return ['cmdline', 'environ'].map((file) => readFileSync(`/proc/${pid}/${file}`, 'utf8').replaceAll('\0', ' ')).join(' ');
  } catch {
    return undefined;
  }
}

export async function forgetStaleProcesses(dataDir: string): Promise<void> {
  if (!existsSync(pidsFile(dataDir))) return;
  const pids = JSON.parse(readFileSync(pidsFile(dataDir), 'utf8')) as number[];
  for (const pid of pids) {
    if (!commandLine(pid)?.includes(dataDir)) continue;
    try {
      process.kill(-pid, 'SIGTERM');
    } catch {
      continue;
    }
    await waitFor(`stale process ${pid} to stop`, async () => commandLine(pid) === undefined, 20_000).catch(() => process.kill(-pid, 'SIGKILL'));
  }
}
