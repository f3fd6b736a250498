import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { errorMessage, log } from '../log.ts';

/** One stored copy, as read back after writing. */
export interface StoredCopy {
  zone: string;
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
export type Verify = 'while' | 'before' | 'sealed';

/**
 * Stands in for one S3 bucket per availability zone: a folder per zone under `root`. Each object is
 * written to every zone (temp file, fsync, rename), and each copy is read back as it is flushed and compared
 * with what was written, so a copy is reported good only when what is on disk is what was sent.
 */
export class ObjectStore {
  constructor(readonly root: string) {}

  path(zone: string, key: string): string {
    return join(this.root, zone, key);
  }

  /** Writes the stream to every zone. A failing source leaves nothing behind; a failing zone is a bad copy. */
  async put(key: string, source: AsyncIterable<Buffer>): Promise<PutResult> {
    const suffix = `.tmp-${randomBytes(6).toString('hex')}`;
    const targets = await Promise.all(zones.map(async (zone) => {
      const path = this.path(zone, key);
      const target = { zone, path, handle: undefined as FileHandle | undefined, reader: undefined as FileHandle | undefined, error: undefined as string | undefined };
      try {
        await mkdir(dirname(path), { recursive: true, mode: 0o700 });
        target.handle = await open(`${path}${suffix}`, 'w', 0o600);
        // Its own descriptor to read the copy back with (the same file once renamed).
        target.reader = await open(`${path}${suffix}`, 'r');
      } catch (error) {
        await target.handle?.close().catch(() => undefined);
        target.handle = undefined;
        target.error = errorMessage(error);
      }
      return target;
    }));
    // Each copy is read back as it is flushed, not all at the end: the end of a backup waits only for the last piece.
    const written = new WrittenBytes();
    const readBack = new ReadBack(targets.filter((t) => t.reader !== undefined).map((t) => ({ path: t.path, handle: t.reader! })), written);
    const hash = createHash('sha256');
    let sizeBytes = 0;
    // The copies go to disk while the source still produces (a pg_dump takes tens of seconds), one copy at a
    // time, rather than all at once in the final fsync: the kernel alone would hold them dirty for 30 s.
    let flushing: Promise<void> | undefined;
    let unflushed = 0;
    // Pieces are written in batches of at least `batchBytes` (one writev per copy): a source of small pieces
    // (pg_dump writes 4 KiB at a time) made three trips through the thread pool per piece.
    let batch: Buffer[] = [];
    let batchedBytes = 0;
    const writeBatch = async () => {
      const pieces = batch;
      batch = [];
      batchedBytes = 0;
      await Promise.all(targets.map(async (t) => {
        if (!t.handle) return;
        try {
          await t.handle.writev(pieces);
        } catch (error) {
          t.error = errorMessage(error);
          await t.handle.close().catch(() => undefined);
          t.handle = undefined;
        }
      }));
    };
    try {
      for await (const chunk of source) {
        hash.update(chunk);
        sizeBytes += chunk.length;
        batch.push(chunk);
        written.add(chunk);
        batchedBytes += chunk.length;
        if (batchedBytes < batchBytes) continue;
        unflushed += batchedBytes;
        await writeBatch();
        if (unflushed >= flushBytes) {
          // One flush at a time: what is kept for the read-back stays bounded when the disk is slower than the source.
          await flushing;
          unflushed = 0;
          const flushedBytes = sizeBytes;
          flushing = (async () => {
            for (const t of targets) await t.handle?.datasync().catch(() => undefined); // the final sync reports
            await readBack.readTo(flushedBytes);
          })().finally(() => { flushing = undefined; });
        }
      }
      await writeBatch();
      await flushing;
    } catch (error) {
      await flushing?.catch(() => undefined);
      await Promise.all(targets.map(async (t) => {
        await t.handle?.close().catch(() => undefined);
        await t.reader?.close().catch(() => undefined);
        await rm(`${t.path}${suffix}`, { force: true }).catch(() => undefined); // a zone gone bad may refuse this too
      }));
      throw error;
    }
    const sha256 = hash.digest('hex');
    const stored = await Promise.all(targets.map(async (t): Promise<string | undefined> => {
      try {
        if (!t.handle) throw new Error(t.error ?? 'not written');
        await t.handle.sync();
        await t.handle.close();
        await rename(`${t.path}${suffix}`, t.path);
        await syncDir(dirname(t.path));
        return t.path;
      } catch (error) {
        log('error', 'could not store a copy', { object: key, zone: t.zone, error: errorMessage(error) });
        await rm(`${t.path}${suffix}`, { force: true }).catch(() => undefined); // a zone gone bad may refuse this too
        return undefined;
      }
    }));
    let problems: Map<string, string>;
    try {
      problems = await readBack.readTo(sizeBytes, true);
    } finally {
      await Promise.all(targets.map((t) => t.reader?.close().catch(() => undefined)));
    }
    const copies = await Promise.all(targets.map(async (t, i): Promise<StoredCopy> => {
      const path = stored[i];
      if (path === undefined) return { zone: t.zone, sha256: '', ok: false };
      const problem = problems.get(path);
      if (!problem) return { zone: t.zone, sha256, ok: true };
      log('error', 'a copy does not read back as written', { object: key, zone: t.zone, problem });
      // Rare: what the bad copy holds, for the record.
      return { zone: t.zone, sha256: await sha256Of(path).catch(() => ''), ok: false };
    }));
    return { sha256, sizeBytes, copies };
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
   * that passes bytes on as they come (a download). `'sealed'`: no hash; `consume` opens an object whose
   * GCM tags are bound to its name (crypto.ts, format 2), which tells all a checksum would, and gets the
   * open file as well, to read it either through `copy` or by itself (crypto.ts decryptFile), not both.
   */
  async readFirstGood<T>(
    key: string, sha256: string, what: string, consume: (copy: Readable, zone: string, file?: FileHandle) => Promise<T>, verify: Verify = 'while',
  ): Promise<T> {
    const problems: string[] = [];
    for (const zone of zones) {
      const path = this.path(zone, key);
      const mismatch = (actual: string) => new Error(`${what} in ${zone}: SHA-256 ${actual} does not match the recorded ${sha256}`);
      try {
        if (verify === 'before') {
          const actual = await sha256Of(path);
          if (actual !== sha256) throw mismatch(actual);
          return await consume(createReadStream(path, { highWaterMark: readBytes }), zone);
        }
        // Opened first, so a missing copy fails here (ENOENT) rather than inside `consume`.
        const handle = await open(path, 'r');
        const file = createReadStream('', { fd: handle, highWaterMark: readBytes });
        const copy = verify === 'sealed' ? file : pipeline(file, hashedAs(sha256, mismatch), () => undefined);
        try {
          return await consume(copy, zone, verify === 'sealed' ? handle : undefined);
        } finally {
          copy.destroy(); // closes the file when `consume` gave up before the end, or read it by itself
        }
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

const batchBytes = 1024 * 1024;
/** Written to disk in the background every so many bytes of an object (see put). */
const flushBytes = 32 * 1024 * 1024;

export async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256');
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.allocUnsafe(readBytes); // one buffer, read into over and over (see ReadBack)
    for (let bytesRead; ({ bytesRead } = await handle.read(buffer, 0, readBytes, null)).bytesRead > 0;) hash.update(buffer.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

/** What put wrote and has not read back from every copy yet, by position in the object. */
class WrittenBytes {
  private pieces: Buffer[] = [];
  /** Where each piece starts in the object. */
  private starts: number[] = [];
  private end = 0;

  add(piece: Buffer): void {
    this.pieces.push(piece);
    this.starts.push(this.end);
    this.end += piece.length;
  }

  /** Whether `data`, read at `position`, is what was written there. */
  equals(position: number, data: Buffer): boolean {
    if (position + data.length > this.end) return false;
    let i = this.pieceAt(position);
    for (let at = 0; at < data.length; i++) {
      const piece = this.pieces[i].subarray(position + at - this.starts[i]);
      const length = Math.min(piece.length, data.length - at);
      if (!piece.subarray(0, length).equals(data.subarray(at, at + length))) return false;
      at += length;
    }
    return true;
  }

  /** The index of the piece that holds byte `position` (a binary search: thousands of pieces may be kept). */
  private pieceAt(position: number): number {
    let [low, high] = [0, this.starts.length - 1];
    while (low < high) {
      const middle = Math.ceil((low + high) / 2);
      if (this.starts[middle] <= position) low = middle;
      else high = middle - 1;
    }
    return low;
  }

  /** Lets go of the pieces that end at or before `position`. */
  dropTo(position: number): void {
    let n = 0;
    while (n < this.pieces.length && this.starts[n] + this.pieces[n].length <= position) n++;
    this.pieces.splice(0, n);
    this.starts.splice(0, n);
  }
}

/**
 * Reads copies back as far as asked each time and compares them with what was written (a memcmp: cheaper than
 * hashing each copy, and exact). Each file is read into one buffer, over and over: a fresh 1 MiB buffer per read is
 * a fresh mapping to fault in (crypto.ts).
 */
class ReadBack {
  private readonly problems = new Map<string, string>();
  private readonly files: { path: string; handle: FileHandle; buffer: Buffer; position: number }[];

  constructor(files: { path: string; handle: FileHandle }[], private readonly written: WrittenBytes) {
    this.files = files.map((file) => ({ ...file, buffer: Buffer.allocUnsafe(readBytes), position: 0 }));
  }

  /** Reads every good copy on to byte `end` (`last`: and checks it ends there); what went wrong, by path. */
  async readTo(end: number, last = false): Promise<Map<string, string>> {
    await Promise.all(this.files.map(async (file) => {
      try {
        while (!this.problems.has(file.path) && file.position < end) {
          const { bytesRead } = await file.handle.read(file.buffer, 0, Math.min(readBytes, end - file.position), file.position);
          if (bytesRead === 0) this.problems.set(file.path, `cut short at byte ${file.position} of ${end}`);
          else if (!this.written.equals(file.position, file.buffer.subarray(0, bytesRead))) this.problems.set(file.path, `differs in bytes ${file.position}–${file.position + bytesRead}`);
          file.position += bytesRead;
        }
        if (last && !this.problems.has(file.path) && (await file.handle.stat()).size !== end) this.problems.set(file.path, `longer than the ${end} bytes written`);
      } catch (error) {
        this.problems.set(file.path, errorMessage(error));
      }
    }));
    this.written.dropTo(end);
    return this.problems;
  }
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
