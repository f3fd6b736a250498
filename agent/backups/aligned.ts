import type { FileHandle } from 'node:fs/promises';

/** The alignment direct I/O asks of memory, file offsets and lengths: a page covers any device's logical block. */
export const alignment = 4096;

const wasmPageBytes = 64 * 1024;

/**
 * Fixed-size buffers that start on a page boundary, for direct I/O (O_DIRECT), lent and given back. Node cannot
 * ask for aligned memory (a Buffer starts 16 bytes into its allocation), but a WebAssembly memory starts on a page:
 * memories of `blocksPerMemory` blocks are cut into blocks. Each is made at its full size and never grown (growing
 * detaches its buffer, and every block cut from it), and not shared: copies into and out of a shared memory are
 * relaxed atomics, 2–5× slower per byte than a plain memmove here. Its pages take memory only once written.
 * A taker never waits: a base backup's store holds its blocks while its source waits for the WAL archive, itself a
 * store; a pool that made takers wait could starve both. Blocks given back are lent again, so the memory made
 * follows the most ever lent at once.
 */
export class AlignedBlocks {
  private readonly free: Buffer[] = [];
  private memory: WebAssembly.Memory | undefined;
  private madeInMemory = 0;

  constructor(readonly blockBytes: number, private readonly blocksPerMemory: number) {
    if (blockBytes % wasmPageBytes !== 0) throw new Error(`a block must be a multiple of ${wasmPageBytes} bytes, not ${blockBytes}`);
  }

  take(count: number): Buffer[] {
    const blocks = this.free.splice(0, count);
    while (blocks.length < count) blocks.push(this.make());
    return blocks;
  }

  give(blocks: Buffer[]): void {
    this.free.push(...blocks);
  }

  private make(): Buffer {
    if (!this.memory || this.madeInMemory === this.blocksPerMemory) {
      this.memory = new WebAssembly.Memory({ initial: (this.blockBytes / wasmPageBytes) * this.blocksPerMemory });
      this.madeInMemory = 0;
    }
    return Buffer.from(this.memory.buffer, this.blockBytes * this.madeInMemory++, this.blockBytes);
  }
}

/**
 * What the store writes and reads back at a time, and restores read copies in (see blocksOf): direct I/O waits for
 * the disk on each call, so a block is large.
 */
export const ioBlockBytes = 4 * 1024 * 1024;
/** Shared by every object stored or read at once: 5 blocks for each one stored, 3 for each one read. */
export const ioBlocks = new AlignedBlocks(ioBlockBytes, 40);

/**
 * A file's bytes in order, a block at a time, read at aligned offsets into aligned blocks, so a descriptor opened
 * with O_DIRECT reads it (any other does too); the next block is read while the caller works on this one. Three
 * blocks take turns: each block yielded stays as it is until two more have been asked for, so a piece of one kept
 * while the next is read (a chunk across two blocks) is still good.
 */
export async function* blocksOf(file: FileHandle, pool = ioBlocks): AsyncGenerator<Buffer> {
  const blocks = pool.take(3);
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
