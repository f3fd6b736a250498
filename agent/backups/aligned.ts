import type { FileHandle } from 'node:fs/promises';

/** The alignment direct I/O asks of memory, file offsets and lengths: a page covers any device's logical block. */
export const alignment = 4096;

const wasmPageBytes = 64 * 1024;

/**
 * Fixed-size buffers that start on a page boundary, for direct I/O (O_DIRECT), lent and given back. Node cannot
 * ask for aligned memory (a Buffer starts 16 bytes into its allocation), but a WebAssembly memory starts on a page:
 * one shared memory, grown a block at a time up to `maxBlocks`, is cut into blocks. Shared, so growing it moves
 * nothing under the blocks already lent. Blocks are lent a set at a time, all or none, so that callers each
 * holding part of a set never wait on one another; a set past `maxBlocks` waits for blocks to come back.
 */
export class AlignedBlocks {
  private readonly memory: WebAssembly.Memory;
  private readonly free: Buffer[] = [];
  private readonly waiting: { count: number; lend: (blocks: Buffer[]) => void }[] = [];
  private made = 0;

  constructor(readonly blockBytes: number, private readonly maxBlocks: number) {
    if (blockBytes % wasmPageBytes !== 0) throw new Error(`a block must be a multiple of ${wasmPageBytes} bytes, not ${blockBytes}`);
    this.memory = new WebAssembly.Memory({ initial: 0, maximum: (blockBytes / wasmPageBytes) * maxBlocks, shared: true });
  }

  async take(count: number): Promise<Buffer[]> {
    if (count > this.maxBlocks) throw new Error(`${count} blocks asked of a pool of ${this.maxBlocks}`);
    if (this.waiting.length === 0 && this.available() >= count) return this.lend(count);
    return new Promise((lend) => this.waiting.push({ count, lend }));
  }

  give(blocks: Buffer[]): void {
    this.free.push(...blocks);
    while (this.waiting.length > 0 && this.available() >= this.waiting[0].count) {
      const { count, lend } = this.waiting.shift()!;
      lend(this.lend(count));
    }
  }

  private available(): number {
    return this.free.length + this.maxBlocks - this.made;
  }

  private lend(count: number): Buffer[] {
    const blocks = this.free.splice(0, count);
    while (blocks.length < count) {
      this.memory.grow(this.blockBytes / wasmPageBytes);
      blocks.push(Buffer.from(this.memory.buffer, this.blockBytes * this.made++, this.blockBytes));
    }
    return blocks;
  }
}

/**
 * What the store writes and reads back at a time, and restores read copies in (see blocksOf): direct I/O waits for
 * the disk on each call, so a block is large.
 */
export const ioBlockBytes = 4 * 1024 * 1024;
/** Shared by every object stored or read at once (~5 blocks each); more wait their turn. */
export const ioBlocks = new AlignedBlocks(ioBlockBytes, 40);

/**
 * A file's bytes in order, a block at a time, read at aligned offsets into aligned blocks, so a descriptor opened
 * with O_DIRECT reads it (any other does too); the next block is read while the caller works on this one. Three
 * blocks take turns: each block yielded stays as it is until two more have been asked for, so a piece of one kept
 * while the next is read (a chunk across two blocks) is still good.
 */
export async function* blocksOf(file: FileHandle, pool = ioBlocks): AsyncGenerator<Buffer> {
  const blocks = await pool.take(3);
  // One read per block: a regular file's read comes back short only at its end (and, direct, could not go on from there).
  const readAt = async (block: Buffer, position: number): Promise<Buffer> => block.subarray(0, (await file.read(block, 0, block.length, position)).bytesRead);
  let next = readAt(blocks[0], 0);
  try {
    for (let i = 1, position = 0; ; i++) {
      const block = await next;
      if (block.length === 0) return;
      position += block.length;
      // A short block is the file's last.
      next = block.length < pool.blockBytes ? Promise.resolve(Buffer.alloc(0)) : readAt(blocks[i % blocks.length], position);
      yield block;
    }
  } finally {
    await next.catch(() => undefined); // a read ahead still under way must end before its block is lent again
    pool.give(blocks);
  }
}
