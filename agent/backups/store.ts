import { createHash, randomBytes, type Hash } from 'node:crypto';
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
 * written to every zone (temp file, fsync, rename), and each copy is read back and hashed as it is flushed,
 * so a copy is reported good only when what is on disk is what was sent.
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
    const readers = targets.filter((t) => t.reader !== undefined).map((t) => ({ path: t.path, handle: t.reader! }));
    // Each copy is read back as it is flushed, not all at the end: the end of a backup waits only for the last piece.
    const readBack = new SideBySideHash(readers);
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
        batchedBytes += chunk.length;
        if (batchedBytes < batchBytes) continue;
        unflushed += batchedBytes;
        await writeBatch();
        if (unflushed >= flushBytes && !flushing) {
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
    const written = await Promise.all(targets.map(async (t): Promise<string | undefined> => {
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
    let digests: Map<string, string | Error>;
    try {
      digests = await readBack.digests();
    } finally {
      await Promise.all(readers.map((r) => r.handle.close().catch(() => undefined)));
    }
    const copies = targets.map((t, i): StoredCopy => {
      const digest = written[i] === undefined ? undefined : digests.get(written[i]);
      if (digest instanceof Error) log('error', 'could not read a copy back', { object: key, zone: t.zone, error: digest.message });
      return typeof digest === 'string' ? { zone: t.zone, sha256: digest, ok: digest === sha256 } : { zone: t.zone, sha256: '', ok: false };
    });
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
   * GCM tags are bound to its name (crypto.ts, format 2), which tells all a checksum would.
   */
  async readFirstGood<T>(
    key: string, sha256: string, what: string, consume: (copy: Readable, zone: string) => Promise<T>, verify: Verify = 'while',
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
        const file = createReadStream('', { fd: await open(path, 'r'), highWaterMark: readBytes });
        const copy = verify === 'sealed' ? file : pipeline(file, hashedAs(sha256, mismatch), () => undefined);
        try {
          return await consume(copy, zone);
        } finally {
          copy.destroy(); // closes the file when `consume` gave up before the end
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
const flushBytes = 64 * 1024 * 1024;

export async function sha256Of(path: string): Promise<string> {
  const digest = (await sha256sOf([path])).get(path)!;
  if (digest instanceof Error) throw digest;
  return digest;
}

/** The SHA-256 of each file (or why it could not be read), in one pass over them side by side (see SideBySideHash). */
export async function sha256sOf(paths: string[]): Promise<Map<string, string | Error>> {
  const results = new Map<string, string | Error>();
  const files = (await Promise.all(paths.map(async (path) => {
    try {
      return { path, handle: await open(path, 'r') };
    } catch (error) {
      results.set(path, error as Error);
      return undefined;
    }
  }))).filter((file) => file !== undefined);
  try {
    for (const [path, digest] of await new SideBySideHash(files).digests()) results.set(path, digest);
  } finally {
    await Promise.all(files.map((file) => file.handle.close().catch(() => undefined)));
  }
  return results;
}

/**
 * Hashes open files side by side, from their start, as far as asked each time. Copies of one object are the same
 * bytes unless one went bad: while a file's pieces equal the others' (a memcmp) it shares their hash; from the
 * piece where it differs, it goes on with a copy of the hash state as it was. Three good copies cost one hash, not
 * three. Each file is read into one buffer, over and over: a fresh 1 MiB buffer per read is a fresh mapping to
 * fault in (crypto.ts).
 */
class SideBySideHash {
  private readonly shared = createHash('sha256');
  private readonly results = new Map<string, string | Error>();
  private readonly files: { path: string; handle: FileHandle; buffer: Buffer; piece: Buffer; position: number; own?: Hash }[];

  constructor(files: { path: string; handle: FileHandle }[]) {
    this.files = files.map((file) => ({ ...file, buffer: Buffer.allocUnsafe(readBytes), piece: Buffer.alloc(0), position: 0 }));
  }

  /** Reads every file on to byte `end`; a file that ends before it (cut short) is hashed as it is. */
  async readTo(end = Infinity): Promise<void> {
    for (let reading = this.going().filter((file) => file.position < end); reading.length > 0;) {
      await Promise.all(reading.map(async (file) => {
        try {
          const { bytesRead } = await file.handle.read(file.buffer, 0, Math.min(readBytes, end - file.position), file.position);
          file.piece = file.buffer.subarray(0, bytesRead);
          file.position += bytesRead;
        } catch (error) {
          this.results.set(file.path, error as Error);
        }
      }));
      reading = reading.filter((file) => !this.results.has(file.path));
      // The shared hash takes the piece of one file that read one; a file sharing it that read something else, or
      // nothing this time (not where the others are any more), goes on with its own.
      const sharing = this.going().filter((file) => !file.own);
      const leader = sharing.find((file) => reading.includes(file));
      for (const file of sharing) {
        if (file !== leader && (!leader || !reading.includes(file) || !file.piece.equals(leader.piece))) file.own = this.shared.copy();
      }
      if (leader) this.shared.update(leader.piece);
      for (const file of reading) {
        if (file.own) file.own.update(file.piece);
        if (file.piece.length === 0) this.results.set(file.path, (file.own ?? this.shared.copy()).digest('hex'));
      }
      reading = reading.filter((file) => file.piece.length > 0 && file.position < end);
    }
  }

  /** Reads every file to its end: the SHA-256 of each, or why it could not be read. */
  async digests(): Promise<Map<string, string | Error>> {
    await this.readTo();
    return this.results;
  }

  private going() {
    return this.files.filter((file) => !this.results.has(file.path));
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
