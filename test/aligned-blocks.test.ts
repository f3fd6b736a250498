import { constants } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlignedBlocks, blocksOf } from '../agent/backups/aligned.ts';

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
    const [first] = pool.take(1);
    first.fill(0xab);
    const more = pool.take(3);
    expect(first.equals(Buffer.alloc(blockBytes, 0xab))).toBe(true);
    // Not shared memory: copies into a shared one are relaxed atomics, slower per byte.
    for (const block of [first, ...more]) expect(block.buffer).not.toBeInstanceOf(SharedArrayBuffer);
    const file = await open(join(dir, 'direct'), constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT, 0o600);
    try {
      for (const [i, block] of [first, ...more].entries()) expect((await file.write(block, 0, blockBytes, i * blockBytes)).bytesWritten).toBe(blockBytes);
    } finally {
      await file.close();
    }
  });

  it('never makes a taker wait: past one memory it makes another, and lends what was given back again', () => {
    const pool = new AlignedBlocks(blockBytes, 2);
    const held = pool.take(3);
    expect(held).toHaveLength(3);
    for (const block of held) block.fill(0xcd);
    pool.give(held.slice(0, 2));
    expect(pool.take(2).every((block) => block.every((byte) => byte === 0xcd))).toBe(true);
    expect(pool.take(1)[0].every((byte) => byte === 0)).toBe(true); // a new one
  });
});

describe('blocksOf', () => {
  /** Blocks that held a file's random bytes were lent before; a new block is all zeros. */
  const reused = (block: Buffer) => block.some((byte) => byte !== 0);
  /** A file whose reads fill the block at once, so a read ahead lands before the block before it is looked at again. */
  const fileOf = (bytes: Buffer) => ({
    read: async (block: Buffer, offset: number, length: number, position: number) => ({ bytesRead: bytes.copy(block, offset, position, position + length), buffer: block }),
  }) as unknown as FileHandle;

  it('yields a file block by block, each kept as it is while the next is read, and gives its blocks back', async () => {
    const bytes = randomBytes(4 * blockBytes + 100);
    const pool = new AlignedBlocks(blockBytes, 3);
    const copies: Buffer[] = [];
    let previous: Buffer | undefined;
    for await (const block of blocksOf(fileOf(bytes), pool)) {
      // A chunk across two blocks is opened with both in hand: the one before must not have been read into yet.
      if (previous) expect(previous.equals(copies.at(-1)!)).toBe(true);
      copies.push(Buffer.from(block));
      previous = block;
    }
    expect(Buffer.concat(copies).equals(bytes)).toBe(true);
    expect(copies.map((copy) => copy.length)).toEqual([blockBytes, blockBytes, blockBytes, blockBytes, 100]);
    expect(pool.take(3).every(reused)).toBe(true);
  });

  it('gives its blocks back when the reader stops early', async () => {
    const pool = new AlignedBlocks(blockBytes, 3);
    for await (const block of blocksOf(fileOf(randomBytes(3 * blockBytes)), pool)) if (block.length > 0) break;
    // The first block and the one read ahead hold the file's bytes.
    expect(pool.take(3).filter(reused)).toHaveLength(2);
  });
});
