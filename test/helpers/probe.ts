/**
 * What a client sees during a change: one write every `everyMs` (each on a new connection, as the caller's
 * `write` does it) until stopped; which were acknowledged, which failed, and the longest time between two
 * acknowledged writes.
 */
export function probeWrites(write: (n: number) => Promise<unknown>, { firstId = 1, everyMs = 20 } = {}) {
  const acknowledged: number[] = [];
  const failures: string[] = [];
  let longestStallMs = 0;
  let running = true;
  const done = (async () => {
    let lastCommit = Date.now();
    for (let n = firstId; running; n++) {
      await write(n).then(
        () => {
          acknowledged.push(n);
          longestStallMs = Math.max(longestStallMs, Date.now() - lastCommit);
          lastCommit = Date.now();
        },
        (error: Error) => failures.push(error.message),
      );
      await new Promise((resolve) => setTimeout(resolve, everyMs));
    }
  })();
  return {
    acknowledged,
    failures,
    async stop() {
      running = false;
      await done;
      return { acknowledged, failures, longestStallMs };
    },
  };
}
