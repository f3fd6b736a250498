import { constants } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlignedBlocks } from '../agent/backups/aligned.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dbplane-aligned-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const blockBytes = 64 * 1024;

describe('AlignedBlocks', () => {
  it('lends blocks a direct write takes, and keeps what they hold as the pool grows', async () => {
    const pool = new AlignedBlocks(blockBytes, 4);
    const [first] = await pool.take(1);
    first.fill(0xab);
    const more = await pool.take(3);
    expect(first.equals(Buffer.alloc(blockBytes, 0xab))).toBe(true);
    const file = await open(join(dir, 'direct'), constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT, 0o600);
    try {
      for (const [i, block] of [first, ...more].entries()) expect((await file.write(block, 0, blockBytes, i * blockBytes)).bytesWritten).toBe(blockBytes);
    } finally {
      await file.close();
    }
  });

  it('lends a set all or none, in the order asked, once enough blocks come back', async () => {
    const pool = new AlignedBlocks(blockBytes, 3);
    const held = await pool.take(2);
    const lent: string[] = [];
    const pair = pool.take(2).then((blocks) => { lent.push('pair'); return blocks; });
    const single = pool.take(1).then((blocks) => { lent.push('single'); return blocks; });
    await new Promise((resolve) => setImmediate(resolve));
    expect(lent).toEqual([]); // one block is free, but the pair asked first
    pool.give(held);
    expect(await pair).toHaveLength(2);
    expect(await single).toHaveLength(1);
    expect(lent).toEqual(['pair', 'single']);
    await expect(pool.take(4)).rejects.toThrow('4 blocks asked of a pool of 3');
  });
});
