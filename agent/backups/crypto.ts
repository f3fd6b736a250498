import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

/**
 * Streaming AES-256-GCM for backups and WAL, under a database's 32-byte data key.
 *
 *   header  = magic "DBPE" | format version (1 byte) | key version (uint32 BE) | nonce prefix (8 random bytes)
 *   chunk i = AES-256-GCM(plaintext[i]) | tag (16 bytes), nonce = prefix | i (uint32 BE),
 *             AAD = header | i (uint32 BE) | final flag (1 byte)
 *
 * Every chunk but the last holds exactly `chunkBytes` of plaintext; the last one (possibly empty) is
 * sealed with the final flag. So a reordered or altered chunk fails its tag, a stream cut at a chunk
 * boundary ends on a chunk not sealed as final, and one cut inside a chunk fails the tag of what is left.
 */
export const chunkBytes = 1024 * 1024;
const magic = Buffer.from('DBPE');
const formatVersion = 1;
const headerBytes = magic.length + 1 + 4 + 8;
const tagBytes = 16;
const sealedChunkBytes = chunkBytes + tagBytes;

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

function aad(header: Buffer, index: number, final: boolean): Buffer {
  const tail = Buffer.alloc(5);
  tail.writeUInt32BE(index, 0);
  tail[4] = final ? 1 : 0;
  return Buffer.concat([header, tail]);
}

/** Encrypts a byte stream; the key is used, never copied or kept beyond the stream. */
export function createEncryptor(key: Buffer, keyVersion: number): Transform {
  if (key.length !== 32) throw new Error('a data key must be 32 bytes');
  const header = Buffer.alloc(headerBytes);
  magic.copy(header, 0);
  header[magic.length] = formatVersion;
  header.writeUInt32BE(keyVersion, magic.length + 1);
  const prefix = randomBytes(8);
  prefix.copy(header, magic.length + 5);
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let index = 0;

  const seal = (plain: Buffer, final: boolean): Buffer => {
    const cipher = createCipheriv('aes-256-gcm', key, nonce(prefix, index)).setAAD(aad(header, index, final));
    index++;
    return Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
  };

  return new Transform({
    construct(callback) {
      this.push(header);
      callback();
    },
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      // Strictly more than a chunk: the last full chunk may turn out to be the final one.
      if (pendingBytes > chunkBytes) {
        let all = Buffer.concat(pending);
        while (all.length > chunkBytes) {
          this.push(seal(all.subarray(0, chunkBytes), false));
          all = all.subarray(chunkBytes);
        }
        pending = [all];
        pendingBytes = all.length;
      }
      callback();
    },
    flush(callback) {
      this.push(seal(Buffer.concat(pending), true));
      pending = [];
      callback();
    },
  });
}

/** The key version an encrypted object was sealed with, read from its header. */
export function keyVersionOf(header: Buffer): number | undefined {
  if (header.length < headerBytes || !header.subarray(0, magic.length).equals(magic)) return undefined;
  return header.readUInt32BE(magic.length + 1);
}

/**
 * Decrypts what createEncryptor produced. `keyFor` picks the key by the version in the header.
 * Fails (with `what` in the message) on a bad header, any altered, reordered or missing chunk, or a
 * stream that ends without its final chunk.
 */
export function createDecryptor(keyFor: (version: number) => Buffer | undefined, what: string): Transform {
  let header: Buffer | undefined;
  let key: Buffer | undefined;
  let prefix: Buffer;
  let buffered: Buffer = Buffer.alloc(0);
  let index = 0;

  const open = (sealed: Buffer, final: boolean): Buffer => {
    try {
      const decipher = createDecipheriv('aes-256-gcm', key!, nonce(prefix, index)).setAAD(aad(header!, index, final));
      decipher.setAuthTag(sealed.subarray(sealed.length - tagBytes));
      const plain = Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - tagBytes)), decipher.final()]);
      index++;
      return plain;
    } catch {
      throw new CorruptObject(`${what}: chunk ${index} failed authentication (tampered, truncated or reordered)`);
    }
  };

  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      try {
        buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
        if (!header) {
          if (buffered.length < headerBytes) return callback();
          header = Buffer.from(buffered.subarray(0, headerBytes));
          const version = keyVersionOf(header);
          if (version === undefined || header[magic.length] !== formatVersion) throw new CorruptObject(`${what}: not an encrypted dbplane object`);
          key = keyFor(version);
          if (!key) throw new CorruptObject(`${what}: sealed with key version ${version}, which this agent does not hold`);
          prefix = header.subarray(magic.length + 5, headerBytes);
          buffered = buffered.subarray(headerBytes);
        }
        while (buffered.length > sealedChunkBytes) {
          this.push(open(buffered.subarray(0, sealedChunkBytes), false));
          buffered = buffered.subarray(sealedChunkBytes);
        }
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
    flush(callback) {
      try {
        if (!header) throw new CorruptObject(`${what}: truncated before its header`);
        if (buffered.length < tagBytes) throw new CorruptObject(`${what}: truncated (no final chunk)`);
        this.push(open(buffered, true));
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
  });
}
