import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';

export interface SpawnAgentOptions {
  dataDir: string;
  secret: string;
  /** 0 or absent: a free port. */
  port?: number;
  /** Enables the fault-injection routes (tests only). */
  faults?: boolean;
  /** The local master key file that wraps data keys (DBPLANE_MASTER_KEY_FILE); created if missing. Default: inherited from the environment. */
  masterKeyFile?: string;
  /** Where backups and WAL go, one folder per zone. Default: `<dataDir>/backups`. */
  backupDir?: string;
  /** How often expired server folders of earlier majors are removed (DBPLANE_AGENT_RETIRED_SWEEP_MS). Default: hourly. */
  retiredSweepMs?: number;
}

export interface AgentProcess {
  url: string;
  pid: number;
  /** SIGTERM, then waits for the agent to stop its servers and exit; SIGKILLs its process group after 15 s. */
  stop(): Promise<void>;
}

const ListeningLine = z.object({ agent: z.literal('listening'), url: z.string() });
const startTimeoutMs = 30_000;
const stopTimeoutMs = 15_000;
/**
 * A backup streams ~1 GB through Buffers (pipe reads, cipher output) that V8 counts as external memory, and by
 * default every 64 MB of it starts a major GC of the whole heap: ~75 per backup, ~2 s of GC threads' CPU (perf).
 * Counted in the global limit instead, they come far less often: the agent's CPU per 1.2 GB backup 6.8 s → 6.1 s in
 * `npm run bench:backups` (medians of 3), for a peak RSS of 417 MB instead of 332 MB (bench/RESULTS.md). V8 takes the flag on the command line only, not in NODE_OPTIONS.
 */
export const agentNodeFlags = ['--external-memory-accounted-in-global-limit'];

/** Starts the agent as a child process (its own process group) and resolves once it listens. */
export async function spawnAgent({ dataDir, secret, port = 0, faults = false, masterKeyFile, backupDir, retiredSweepMs }: SpawnAgentOptions): Promise<AgentProcess> {
  // node itself, not the tsx CLI: the CLI relays signals and SIGKILLs a child that takes over 30 ms to answer one,
  // which on a loaded machine cut the agent's own stop (its servers left behind).
  const child = spawn(process.execPath, [...agentNodeFlags, '--import', import.meta.resolve('tsx'), fileURLToPath(new URL('./main.ts', import.meta.url))], {
    detached: true,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: {
      ...process.env,
      DBPLANE_AGENT_DATA_DIR: dataDir,
      DBPLANE_AGENT_SECRET: secret,
      DBPLANE_AGENT_PORT: String(port),
      DBPLANE_AGENT_FAULTS: faults ? '1' : '0',
      ...(masterKeyFile ? { DBPLANE_MASTER_KEY_FILE: masterKeyFile } : {}),
      ...(backupDir ? { DBPLANE_AGENT_BACKUP_DIR: backupDir } : {}),
      ...(retiredSweepMs ? { DBPLANE_AGENT_RETIRED_SWEEP_MS: String(retiredSweepMs) } : {}),
    },
  });
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });

  const url = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const timer = setTimeout(() => fail(new Error(`the agent did not start listening within ${startTimeoutMs} ms`)), startTimeoutMs);
    function fail(error: Error) {
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, 'SIGKILL');
      reject(error);
    }
    lines.once('line', (line) => {
      clearTimeout(timer);
      const parsed = ListeningLine.safeParse(parseJson(line));
      if (parsed.success) resolve(parsed.data.url);
      else fail(new Error(`unexpected first line from the agent: ${line}`));
    });
    child.once('error', fail);
    child.once('exit', (code, signal) => fail(new Error(`the agent exited before listening (${signal ?? `exit code ${code}`})`)));
  });

  return {
    url,
    pid: child.pid!,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), stopTimeoutMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
