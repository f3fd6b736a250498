import { spawn } from 'node:child_process';
import { join } from 'node:path';

/** The CLI as a user runs it: a child process through cli/bin.mjs. */

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

const bin = join(import.meta.dirname, '..', '..', 'cli', 'bin.mjs');

export function dbplane(args: string[], env: Record<string, string>, cwd?: string): Promise<Run> {
  // The developer's own DBPLANE_* settings must not leak into the test.
  const base = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('DBPLANE_')));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env: { ...base, ...env }, cwd });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Fails with the CLI's output, which says why, rather than with a bare exit code. */
export function succeeded(run: Run): Run {
  if (run.code !== 0) throw new Error(`dbplane exited ${run.code}:\n${run.stdout}\n${run.stderr}`);
  return run;
}
