import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { Transform, type TransformCallback } from 'node:stream';
import { blocksOf } from './aligned.ts';

/**
 * Streaming AES-256-GCM for backups and WAL, under a database's 32-byte data key.
 *
 *   header  = magic "DBPE" | format version (1 byte) | key version (uint32 BE) | nonce prefix (8 random bytes)
 *   chunk i = AES-256-GCM(plaintext[i]) | tag (16 bytes), nonce = prefix | i (uint32 BE),
 *             AAD = header | object name (UTF-8) | i (uint32 BE) | final flag (1 byte)
 *
 * Every chunk but the last holds exactly `chunkBytes` of plaintext; the last one (possibly empty) is
 * sealed with the final flag. So a reordered or altered chunk fails its tag, a stream cut at a chunk
 * boundary ends on a chunk not sealed as final, and one cut inside a chunk fails the tag of what is left.
 * The object's name (its key in the store) is authenticated too, so another object sealed with the same
 * data key, copied over this one, fails its first tag: the tags alone tell the object is the one asked
 * for, intact and whole, and a restore needs no SHA-256 pass of its own. Format 1 (before names were
 * bound) is still read: its AAD has no name, and only a checksum tells a swapped copy.
 */
export const chunkBytes = 1024 * 1024;
const magic = Buffer.from('DBPE');
/** Format 2 binds the object name; format 1 objects are only read. */
const formatVersion = 2;
const unboundFormatVersion = 1;
const headerBytes = magic.length + 1 + 4 + 8;
const tagBytes = 16;
const sealedChunkBytes = chunkBytes + tagBytes;
/**
 * What one `update` gets at most. Each call allocates its output, and an output above glibc's mmap
 * threshold (128 KiB) is a fresh mapping, faulted in page by page: with 1 MiB pieces AES-GCM ran at
 * ~0.35 GB/s on a 2-core EPYC, with 64 KiB ones at ~2.9 GB/s (bench/RESULTS.md).
 */
const updateBytes = 64 * 1024;

/** Runs `piece` through the cipher in slices of at most `updateBytes`. */
function* through(cipher: { update(data: Buffer): Buffer }, piece: Buffer): Generator<Buffer> {
  for (let at = 0; at < piece.length; at += updateBytes) yield cipher.update(piece.subarray(at, at + updateBytes));
}

/** Names what failed to decrypt (a backup or WAL file, and the zone its copy came from). */
export class CorruptObject extends Error {
  override readonly name = 'CorruptObject';
}

function nonce(prefix: Buffer, index: number): Buffer {
  const n = Buffer.alloc(12);
  prefix.copy(n, 0);
  n.writeUInt32BE(index, 8);
  return n;
}

/** Header and tail are fixed-length, so the name between them needs no length of its own. */
function aad(header: Buffer, name: Buffer, index: number, final: boolean): Buffer {
  const tail = Buffer.alloc(5);
  tail.writeUInt32BE(index, 0);
  tail[4] = final ? 1 : 0;
  return Buffer.concat([header, name, tail]);
}

/** Encrypts a byte stream stored as `object`; the key is used, never copied or kept beyond the stream. */
export function createEncryptor(key: Buffer, keyVersion: number, object: string): Transform {
  if (key.length !== 32) throw new Error('a data key must be 32 bytes');
  const header = Buffer.alloc(headerBytes);
  magic.copy(header, 0);
  header[magic.length] = formatVersion;
  header.writeUInt32BE(keyVersion, magic.length + 1);
  const prefix = randomBytes(8);
  prefix.copy(header, magic.length + 5);
  const name = Buffer.from(object);
  const pending = new PieceQueue();
  let index = 0;

  // Pieces go through the cipher as they are: no copy into one chunk-sized buffer, no concatenation.
  const seal = (stream: Transform, plain: Buffer[], final: boolean): void => {
    const cipher = createCipheriv('aes-256-gcm', key, nonce(prefix, index)).setAAD(aad(header, name, index, final));
    index++;
    for (const piece of plain) for (const sealed of through(cipher, piece)) stream.push(sealed);
    const last = cipher.final(); // empty for GCM, which is a stream cipher
    if (last.length > 0) stream.push(last);
    stream.push(cipher.getAuthTag());
  };

  return new Transform({
    // Its pieces handed on one by one: read as bytes, a stream's async iterator (what the store's put consumes)
    // joins all it holds into one new Buffer per read, a copy of every byte (~0.3 s of CPU per 1.2 GB here).
    readableObjectMode: true,
    construct(callback) {
      this.push(header);
      callback();
    },
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      pending.add(chunk);
      // Strictly more than a chunk: the last full chunk may turn out to be the final one.
      while (pending.bytes > chunkBytes) seal(this, pending.take(chunkBytes), false);
      callback();
    },
    flush(callback) {
      seal(this, pending.take(pending.bytes), true);
      callback();
    },
  });
}

/** Buffers kept as received; `take` hands out the first n bytes as slices of them. */
class PieceQueue {
  private pieces: Buffer[] = [];
  bytes = 0;

  add(piece: Buffer): void {
    this.pieces.push(piece);
    this.bytes += piece.length;
  }

  take(n: number): Buffer[] {
    const taken: Buffer[] = [];
    let need = n;
    while (need > 0) {
      const head = this.pieces[0];
      if (head.length <= need) {
        taken.push(head);
        this.pieces.shift();
        need -= head.length;
      } else {
        taken.push(head.subarray(0, need));
        this.pieces[0] = head.subarray(need);
        need = 0;
      }
    }
    this.bytes -= n;
    return taken;
  }
}

/** The key version an encrypted object was sealed with, read from its header. */
export function keyVersionOf(header: Buffer): number | undefined {
  if (header.length < headerBytes || !header.subarray(0, magic.length).equals(magic)) return undefined;
  return header.readUInt32BE(magic.length + 1);
}

/** What an object's header gives to open its chunks with. */
interface Opening {
  header: Buffer;
  key: Buffer;
  prefix: Buffer;
  name: Buffer;
}

/** Checks a header and picks its key (see createDecryptor); throws CorruptObject naming `what`. */
function openingOf(header: Buffer, keyFor: (version: number) => Buffer | undefined, what: string, object: string, unboundAllowed: boolean): Opening {
  const version = keyVersionOf(header);
  const format = header[magic.length];
  if (version === undefined || (format !== formatVersion && format !== unboundFormatVersion)) throw new CorruptObject(`${what}: not an encrypted dbplane object`);
  if (format === unboundFormatVersion && !unboundAllowed) throw new CorruptObject(`${what}: sealed without its name (format 1), where a format 2 object was recorded`);
  const key = keyFor(version);
  if (!key) throw new CorruptObject(`${what}: sealed with key version ${version}, which this agent does not hold`);
  return { header, key, prefix: header.subarray(magic.length + 5, headerBytes), name: format === formatVersion ? Buffer.from(object) : Buffer.alloc(0) };
}

/**
 * The plaintext of sealed chunk `index`, all of it or nothing: it is returned once its tag has been checked
 * (only authenticated plaintext leaves), so `ciphertext` may be reused as soon as this returns.
 */
function openChunk(opening: Opening, index: number, ciphertext: Buffer[], tag: Buffer, final: boolean, what: string): Buffer[] {
  try {
    const decipher = createDecipheriv('aes-256-gcm', opening.key, nonce(opening.prefix, index)).setAAD(aad(opening.header, opening.name, index, final));
    decipher.setAuthTag(tag);
    const plain = ciphertext.flatMap((piece) => [...through(decipher, piece)]);
    plain.push(decipher.final());
    return plain;
  } catch {
    throw new CorruptObject(`${what}: chunk ${index} failed authentication (tampered, truncated, reordered or another object)`);
  }
}

/**
 * Opens the chunks of an object as its sealed bytes come in, and the final one at their end (see createDecryptor).
 * Keeps references to the pieces it is given until the chunks they belong to are opened.
 */
class ChunkOpener {
  private opening: Opening | undefined;
  private readonly buffered = new PieceQueue();
  private index = 0;

  constructor(
    private readonly keyFor: (version: number) => Buffer | undefined, private readonly what: string,
    private readonly object: string, private readonly unboundAllowed: boolean,
  ) {}

  /** Adds sealed bytes; the plaintext of every chunk they complete, but the last one seen (it may be the final one). */
  *add(piece: Buffer): Generator<Buffer> {
    this.buffered.add(piece);
    if (!this.opening) {
      if (this.buffered.bytes < headerBytes) return;
      this.opening = openingOf(Buffer.concat(this.buffered.take(headerBytes)), this.keyFor, this.what, this.object, this.unboundAllowed);
    }
    while (this.buffered.bytes > sealedChunkBytes) yield* this.open(false);
  }

  /** The plaintext of the final chunk: what is left once every sealed byte was added. */
  *end(): Generator<Buffer> {
    if (!this.opening) throw new CorruptObject(`${this.what}: truncated before its header`);
    if (this.buffered.bytes < tagBytes) throw new CorruptObject(`${this.what}: truncated (no final chunk)`);
    yield* this.open(true);
  }

  private open(final: boolean): Buffer[] {
    const body = new PieceQueue();
    this.buffered.take(final ? this.buffered.bytes : sealedChunkBytes).forEach((piece) => body.add(piece));
    const ciphertext = body.take(body.bytes - tagBytes);
    return openChunk(this.opening!, this.index++, ciphertext, Buffer.concat(body.take(tagBytes)), final, this.what);
  }
}

/**
 * Decrypts what createEncryptor produced for `object`. `keyFor` picks the key by the version in the header.
 * Fails (with `what` in the message) on a bad header, any altered, reordered or missing chunk, a stream
 * that ends without its final chunk, or (format 2) an object sealed under another name. Format 1 is
 * opened only if `unboundAllowed`: where the caller checks a checksum as well.
 */
export function createDecryptor(keyFor: (version: number) => Buffer | undefined, what: string, object: string, unboundAllowed = false): Transform {
  const opener = new ChunkOpener(keyFor, what, object, unboundAllowed);
  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      try {
        for (const plain of opener.add(chunk)) this.push(plain);
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
    flush(callback) {
      try {
        for (const plain of opener.end()) this.push(plain);
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
  });
}

/**
 * createDecryptor's work on a whole sealed file, read in aligned blocks (aligned.ts blocksOf): with direct I/O where
 * the file was opened so, as restores do. Read through the page cache, a copy not already in it cost ~0.95 s of
 * system CPU per 630 MB on a 2-core EPYC (the kernel filling the cache), and a copy fresh from a backup is not
 * in it (the store writes with direct I/O). A file that changes while read fails its tags.
 */
export async function* decryptFile(
  file: FileHandle, keyFor: (version: number) => Buffer | undefined, what: string, object: string, unboundAllowed = false,
): AsyncGenerator<Buffer> {
  const opener = new ChunkOpener(keyFor, what, object, unboundAllowed);
  // A chunk kept across two blocks is still good: blocksOf keeps each block as it is until two more were asked for.
  for await (const block of blocksOf(file)) yield* opener.add(block);
  yield* opener.end();
}
