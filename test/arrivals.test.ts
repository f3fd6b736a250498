import { describe, expect, it } from 'vitest';
import { Arrivals } from '../agent/backups/arrivals.ts';

const notThere = async () => false;
const late = (name: string) => () => new Error(`${name} did not arrive`);

describe('arrivals (a backup waiting for the last WAL file it needs)', () => {
  it('wakes every waiter for a name once it arrives, and only them', async () => {
    const arrivals = new Arrivals();
    let otherDone = false;
    const first = arrivals.until('a', notThere, 5_000, late('a'));
    const second = arrivals.until('a', notThere, 5_000, late('a'));
    const other = arrivals.until('b', notThere, 100, late('b')).catch(() => { otherDone = true; });
    await new Promise((resolve) => setImmediate(resolve));
    arrivals.arrived('a');
    await Promise.all([first, second]);
    expect(otherDone).toBe(false);
    await other;
    expect(otherDone).toBe(true);
    expect(arrivals.waitedFor).toBe(0);
  });

  it('resolves at once for an object already there', async () => {
    await new Arrivals().until('a', async () => true, 5_000, late('a'));
  });

  it('sees an object stored while it looked whether it was there', async () => {
    const arrivals = new Arrivals();
    await arrivals.until('a', async () => {
      arrivals.arrived('a'); // stored after the look began, so the look says no
      return false;
    }, 5_000, late('a'));
  });

  it('fails with its reason after the timeout when nothing arrives, and keeps no waiter', async () => {
    const arrivals = new Arrivals();
    const started = performance.now();
    await expect(arrivals.until('a', notThere, 100, late('WAL file 000000010000000000000003'))).rejects.toThrow('WAL file 000000010000000000000003 did not arrive');
    expect(performance.now() - started).toBeGreaterThanOrEqual(90);
    expect(arrivals.waitedFor).toBe(0);
    arrivals.arrived('a'); // nobody left to wake
  });
});
