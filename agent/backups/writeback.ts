import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/**
 * Pause between two syncs: each one waits for what was dirty when it began, and stalls the writer while it runs.
 * Where writes are fast the write-back saved 0.3–0.5 s per 1.2 GB restored (0.1 s pauses; the server's sync before
 * recovery went from 0.6–0.8 s to ~0.1 s); where they are slow it costs: unpacking 1.2 GB then syncing took 3.8 s with
 * 0.1 s pauses, 3.2 s with 0.3 s, 2.7 s with 0.5 s and 2.3 s without write-back (`npm run bench:restore-floor`,
 * bench/RESULTS.md). 0.5 s is a middle ground, not yet measured where writes are fast.
 */
const defaultPauseMs = 500;

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
