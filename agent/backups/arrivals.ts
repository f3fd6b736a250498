import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Waits for named objects to arrive (WAL files in the archive), woken by whoever stores them rather than by
 * looking again and again. Whether one is there already is asked once the waiter is in place, so an object
 * stored in between is seen either way.
 */
export class Arrivals {
  private readonly waiters = new Map<string, Set<() => void>>();

  /** Wakes everyone waiting for `name`. */
  arrived(name: string): void {
    for (const wake of this.waiters.get(name) ?? []) wake();
  }

  /** Resolves once `name` arrived or `isThere()` says it has; rejects with `late()` after `timeoutMs`. */
  async until(name: string, isThere: () => Promise<boolean>, timeoutMs: number, late: () => Error): Promise<void> {
    const waiters = this.waiters.get(name) ?? new Set();
    this.waiters.set(name, waiters);
    const gaveUp = new AbortController();
    let wake!: () => void;
    const woken = new Promise<void>((resolve) => { wake = resolve; });
    waiters.add(wake);
    try {
      if (await isThere()) return;
      await Promise.race([woken, sleep(timeoutMs, undefined, { signal: gaveUp.signal }).then(() => { throw late(); })]);
    } finally {
      gaveUp.abort();
      waiters.delete(wake);
      if (waiters.size === 0) this.waiters.delete(name);
    }
  }

  /** How many names someone waits for (none once every wait ended). */
  get waitedFor(): number {
    return this.waiters.size;
  }
}
