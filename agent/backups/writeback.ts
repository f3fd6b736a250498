import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Pause between two syncs: each one waits for what was dirty when it began, so this only spaces out the spawns. */
const defaultPauseMs = 100;

/**
 * Runs `work` while the file system holding `dir` is synced over and over (`sync -f`: syncfs), so what `work`
 * writes reaches the disk while it is written. Left to the kernel, ~1.2 GB unpacked by a restore stayed dirty until
 * the server synced it before recovery: 0.6–0.8 s with both CPUs idle (bench/RESULTS.md). A failed sync only
 * loses the head start: the server's own sync still makes the files durable. Returns once `work` and the sync
 * under way have ended: a pause under way is cut short.
 */
export async function writtenBackWhile<T>(dir: string, work: () => Promise<T>, { pauseMs = defaultPauseMs } = {}): Promise<T> {
  const done = new AbortController();
  const syncing = (async () => {
    while (!done.signal.aborted) {
      await execFileAsync('sync', ['-f', dir]).catch(() => undefined);
      await sleep(pauseMs, undefined, { signal: done.signal }).catch(() => undefined);
    }
  })();
  try {
    return await work();
  } finally {
    done.abort();
    await syncing;
  }
}
