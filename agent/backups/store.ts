import { createHash, randomBytes } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { errorMessage, log } from '../log.ts';
import { alignment, ioBlockBytes, ioBlocks } from './aligned.ts';

/** One stored copy, as read back after writing. */
export interface StoredCopy {
  zone: string;
  /** The object's SHA-256 for a good copy; empty for a bad one (removed: it holds nothing to restore from). */
  sha256: string;
  ok: boolean;
}

export interface PutResult {
  /** SHA-256 of the bytes written (every good copy reads back with it). */
  sha256: string;
  sizeBytes: number;
  copies: StoredCopy[];
}

export const zones = ['zone-a', 'zone-b', 'zone-c'] as const;

/** How readFirstGood checks a copy (see there). */
export type Verify = 'while' | 'before';

export interface ObjectStoreOptions {
  /**
   * Whether copies are written and read back through direct I/O where the file system allows it (see
   * CopyInProgress); false: through the page cache, as on a file system without direct I/O.
   * @default true
   */
  directIo?: boolean;
  /**
   * Called for each copy once a block of it is written, before the block is read back: for tests, to do to the
   * copy what a failing disk would (which a real disk does not do on demand).
   */
  beforeReadBack?: (copy: { zone: string; file: string }, position: number, length: number) => Promise<void>;
}

/**
 * Stands in for one S3 bucket per availability zone: a folder per zone under `root`. Each object is
 * written to every zone (temp file, fsync, rename), and each copy is read back from the disk as it is written
 * and compared with what was sent, so a copy is reported good only when what is on disk is what was sent.
 */
export class ObjectStore {
  constructor(readonly root: string, private readonly options: ObjectStoreOptions = {}) {}

  path(zone: string, key: string): string {
    return join(this.root, zone, key);
  }

  /**
   * Writes the stream to every zone, a block at a time: while one block is written to the copies and read back,
   * the next one fills. A failing source leaves nothing behind; a zone that fails, or a copy that does not read
   * back as written, is a bad copy, written no further and removed.
   */
  async put(key: string, source: AsyncIterable<Buffer>): Promise<PutResult> {
    const suffix = `.tmp-${randomBytes(6).toString('hex')}`;
    const copies = await Promise.all(zones.map((zone) => CopyInProgress.open(key, zone, this.path(zone, key), suffix, this.options.directIo ?? true)));
    const lent = ioBlocks.take(blocksPerPut);
    let [filling, storing] = lent;
    const readBuffers = lent.slice(2);
    const storeBlock = async (block: Buffer, length: number, position: number) => {
      await Promise.all(copies.map((copy, i) => copy.store(block, length, position, readBuffers[i], this.options.beforeReadBack)));
    };
    const hash = createHash('sha256');
    let sizeBytes = 0;
    let filled = 0;
    let stored = Promise.resolve();
    try {
      for await (const chunk of source) {
        hash.update(chunk);
        for (let at = 0; at < chunk.length;) {
          const copied = chunk.copy(filling, filled, at);
          at += copied;
          filled += copied;
          sizeBytes += copied;
          if (filled < ioBlockBytes) continue;
          await stored;
          [filling, storing] = [storing, filling];
          stored = storeBlock(storing, ioBlockBytes, sizeBytes - ioBlockBytes);
          filled = 0;
        }
      }
      await stored;
      if (filled > 0) await storeBlock(filling, filled, sizeBytes - filled);
    } catch (error) {
      await stored; // never rejects: a copy's failure is its problem
      await Promise.all(copies.map((copy) => copy.discard()));
      throw error;
    } finally {
      ioBlocks.give(lent); // nothing reads or writes them any more: every store above was awaited
    }
    const sha256 = hash.digest('hex');
    const good = await Promise.all(copies.map((copy) => copy.finish(sizeBytes)));
    return { sha256, sizeBytes, copies: copies.map((copy, i) => ({ zone: copy.zone, sha256: good[i] ? sha256 : '', ok: good[i] })) };
  }

  /** Small metadata, written whole (temp file, fsync, rename) to every zone. */
  async putJson(key: string, value: unknown): Promise<void> {
    const body = Buffer.from(JSON.stringify(value, null, 2));
    await Promise.all(zones.map(async (zone) => {
      const path = this.path(zone, key);
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      const temp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
      const handle = await open(temp, 'w', 0o600);
      try {
        await handle.write(body);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, path);
    }));
  }

  /** The metadata as the first zone that holds a readable copy has it. */
  async getJson(key: string): Promise<unknown> {
    for (const zone of zones) {
      const text = await readFile(this.path(zone, key), 'utf8').catch(() => undefined);
      if (text === undefined) continue;
      try {
        return JSON.parse(text);
      } catch {
        log('warn', 'skipping unreadable metadata', { object: key, zone });
      }
    }
    return undefined;
  }

  /**
   * Hands the first copy whose bytes hash to `sha256` to `consume` (which decrypts it); a copy that does
   * not match, or that `consume` rejects, is logged and skipped. Fails, naming `what`, when no copy is good.
   *
   * `verify: 'while'` (one pass): the copy is hashed as `consume` reads it, and its stream fails at its
   * end when the digest differs, so `consume` must keep what it read to itself until the stream ended
   * (a restore unpacks into a scratch folder). `'before'`: a pass over the copy first, for a consumer
   * that passes bytes on as they come (a download).
   */
  async readFirstGood<T>(
    key: string, sha256: string, what: string, consume: (copy: Readable, zone: string) => Promise<T>, verify: Verify = 'while',
  ): Promise<T> {
    return this.firstGood(key, what, async (path, zone) => {
      const mismatch = (actual: string) => new Error(`${what} in ${zone}: SHA-256 ${actual} does not match the recorded ${sha256}`);
      if (verify === 'before') {
        const actual = await sha256Of(path);
        if (actual !== sha256) throw mismatch(actual);
        return consume(createReadStream(path, { highWaterMark: readBytes }), zone);
      }
      // Opened first, so a missing copy fails here (ENOENT) rather than inside `consume`.
      const handle = await open(path, 'r');
      const copy = pipeline(createReadStream('', { fd: handle, highWaterMark: readBytes }), hashedAs(sha256, mismatch), () => undefined);
      try {
        return await consume(copy, zone);
      } finally {
        copy.destroy(); // closes the file when `consume` gave up before the end
      }
    });
  }

  /**
   * Hands the first copy `consume` accepts to it, as a file open for direct I/O where the file system allows it
   * (read it in aligned blocks: crypto.ts decryptFile); a copy `consume` rejects is logged and skipped. For an object
   * whose GCM tags are bound to its name (crypto.ts, format 2): they tell all a checksum would. Fails, naming
   * `what`, when no copy is good.
   */
  async readFirstSealed<T>(key: string, what: string, consume: (file: FileHandle, zone: string) => Promise<T>): Promise<T> {
    return this.firstGood(key, what, async (path, zone) => {
      const file = await open(path, directRead).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'EINVAL') return open(path, 'r'); // no direct I/O on this file system
        throw error;
      });
      try {
        return await consume(file, zone);
      } finally {
        await file.close();
      }
    });
  }

  /** The first copy `attempt` succeeds with, zone after zone; each failure logged and skipped. */
  private async firstGood<T>(key: string, what: string, attempt: (path: string, zone: string) => Promise<T>): Promise<T> {
    const problems: string[] = [];
    for (const zone of zones) {
      try {
        return await attempt(this.path(zone, key), zone);
      } catch (error) {
        const problem = (error as NodeJS.ErrnoException).code === 'ENOENT' ? `${what} in ${zone}: missing` : errorMessage(error);
        log('warn', 'skipping a bad copy', { object: key, zone, problem });
        problems.push(problem);
      }
    }
    throw new Error(`no good copy of ${what}: ${problems.join('; ')}`);
  }

  /** Names (not paths) in a folder of the first zone that has it, merged across zones. */
  async list(dir: string): Promise<string[]> {
    const names = new Set<string>();
    for (const zone of zones) {
      for (const name of await readdir(this.path(zone, dir)).catch(() => [] as string[])) {
        if (!name.includes('.tmp-')) names.add(name);
      }
    }
    return [...names].sort();
  }

  async exists(key: string): Promise<boolean> {
    for (const zone of zones) if (await stat(this.path(zone, key)).then(() => true, () => false)) return true;
    return false;
  }

  /** Removes an object or a folder from every zone; absent is fine. */
  async remove(key: string): Promise<void> {
    await Promise.all(zones.map((zone) => rm(this.path(zone, key), { recursive: true, force: true })));
  }
}

/** Reads in large pieces: fewer turns of the event loop per byte (the default is 64 KiB). */
const readBytes = 1024 * 1024;

/** Two blocks fill in turn (see put), and one per copy is read back into. */
const blocksPerPut = 2 + zones.length;

export async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256');
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.allocUnsafe(readBytes); // one buffer, read into over and over: a fresh one per read is a fresh mapping to fault in
    for (let bytesRead; ({ bytesRead } = await handle.read(buffer, 0, readBytes, null)).bytesRead > 0;) hash.update(buffer.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

/**
 * One copy being written, through direct I/O (O_DIRECT) where the file system allows it: its
 * bytes go from the block to the disk, and its read-back reads the disk, not the page cache the write left them in.
 * Through the page cache, writing three copies of 1.2 GB and reading them back cost ~7 s of system CPU on a
 * 2-core EPYC, which a backup took from tar, zstd and pg_dump; direct, ~0.4 s (bench/RESULTS.md).
 */
class CopyInProgress {
  /** Why the copy is bad; once set, the copy is written no further. */
  problem: string | undefined;

  private constructor(
    readonly key: string, readonly zone: string, readonly path: string, readonly temp: string,
    private readonly writer?: FileHandle, private readonly reader?: FileHandle, readonly direct = false,
  ) {}

  static async open(key: string, zone: string, path: string, suffix: string, directIo: boolean): Promise<CopyInProgress> {
    const temp = `${path}${suffix}`;
    let writer: FileHandle | undefined;
    try {
      await mkdir(dirname(path), { recursive: true, mode: 0o700 });
      if (directIo) {
        writer = await open(temp, directWrite, 0o600).catch((error: NodeJS.ErrnoException) => {
          if (error.code === 'EINVAL') return undefined; // no direct I/O on this file system (tmpfs before Linux 6.6)
          throw error;
        });
      }
      const direct = writer !== undefined;
      writer ??= await open(temp, bufferedWrite, 0o600);
      const reader = await open(temp, direct ? directRead : constants.O_RDONLY);
      return new CopyInProgress(key, zone, path, temp, writer, reader, direct);
    } catch (error) {
      await writer?.close().catch(() => undefined);
      await rm(temp, { force: true }).catch(() => undefined);
      const copy = new CopyInProgress(key, zone, path, temp);
      copy.problem = errorMessage(error);
      return copy;
    }
  }

  /** Writes `length` bytes of `block` at `position`, then reads them back and compares; a failure makes the copy bad. */
  async store(block: Buffer, length: number, position: number, readBuffer: Buffer, beforeReadBack: ObjectStoreOptions['beforeReadBack']): Promise<void> {
    if (this.problem !== undefined) return;
    try {
      if (this.direct && length % alignment !== 0) {
        // The object's last block, cut to a length direct I/O refuses: through the page cache (fsynced in `finish`).
        const tail = await open(this.temp, 'r+');
        try {
          await writeAll(tail, block, length, position);
        } finally {
          await tail.close();
        }
      } else {
        await writeAll(this.writer!, block, length, position);
        if (!this.direct) await this.writer!.datasync(); // so the read-back below reads what reached the disk
      }
      await beforeReadBack?.({ zone: this.zone, file: this.temp }, position, length);
      // Direct reads take whole blocks: the last one is asked for whole and comes back as long as the file is. One
      // read: a regular file's comes back short only at its end.
      const asked = this.direct ? Math.ceil(length / alignment) * alignment : length;
      const { bytesRead: got } = await this.reader!.read(readBuffer, 0, asked, position);
      if (got < length) this.problem = `cut short at byte ${position + got}, where ${position + length} were written`;
      else if (!readBuffer.subarray(0, length).equals(block.subarray(0, length))) this.problem = `differs from what was written in bytes ${position}–${position + length}`;
    } catch (error) {
      this.problem = errorMessage(error);
    }
  }

  /** A good copy made durable under its name (true), or a bad one removed (false). */
  async finish(sizeBytes: number): Promise<boolean> {
    try {
      if (this.problem === undefined) {
        const { size } = await this.writer!.stat();
        if (size !== sizeBytes) this.problem = `${size} bytes long, where ${sizeBytes} were written`;
      }
      if (this.problem === undefined) {
        await this.writer!.sync();
        await this.close();
        await rename(this.temp, this.path);
        await syncDir(dirname(this.path));
        return true;
      }
    } catch (error) {
      this.problem = errorMessage(error);
    }
    log('error', 'a copy could not be stored as written', { object: this.key, zone: this.zone, problem: this.problem });
    await this.discard();
    return false;
  }

  /** Closes the copy and removes what was written of it. */
  async discard(): Promise<void> {
    await this.close();
    await rm(this.temp, { force: true }).catch(() => undefined); // a zone gone bad may refuse this too
  }

  private async close(): Promise<void> {
    await this.writer?.close().catch(() => undefined);
    await this.reader?.close().catch(() => undefined);
  }
}

const bufferedWrite = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
const directWrite = bufferedWrite | constants.O_DIRECT;
const directRead = constants.O_RDONLY | constants.O_DIRECT;

async function writeAll(file: FileHandle, block: Buffer, length: number, position: number): Promise<void> {
  const { bytesWritten } = await file.write(block, 0, length, position);
  if (bytesWritten !== length) throw new Error(`wrote ${bytesWritten} of ${length} bytes at byte ${position}`);
}

/** Passes bytes through, hashing them; fails at the end when their SHA-256 is not `expected`. */
function hashedAs(expected: string, mismatch: (actual: string) => Error): Transform {
  const hash = createHash('sha256');
  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      hash.update(chunk);
      callback(null, chunk);
    },
    flush(callback) {
      const actual = hash.digest('hex');
      callback(actual === expected ? null : mismatch(actual));
    },
  });
}

async function syncDir(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
