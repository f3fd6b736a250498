import { Transform, type TransformCallback } from 'node:stream';

const block = 512;
const trailerBytes = 2 * block;

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, '0')}\0`;
}

/** One regular file as a ustar entry (header, content, padding to 512 bytes). */
export function tarEntry(name: string, content: Buffer, owner: { uid: number; gid: number }, mode = 0o600): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar entry name too long: ${name}`);
  const header = Buffer.alloc(block);
  header.write(name, 0, 100, 'utf8');
  header.write(octal(mode, 8), 100, 8, 'ascii');
  header.write(octal(owner.uid, 8), 108, 8, 'ascii');
  header.write(octal(owner.gid, 8), 116, 8, 'ascii');
  header.write(octal(content.length, 12), 124, 12, 'ascii');
  header.write(octal(Math.floor(Date.now() / 1000), 12), 136, 12, 'ascii');
  header.write(' '.repeat(8), 148, 8, 'ascii');
  header.write('0', 156, 1, 'ascii');
  header.write('ustar\0', 257, 6, 'ascii');
  header.write('00', 263, 2, 'ascii');
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  const padding = Buffer.alloc((block - (content.length % block)) % block);
  return Buffer.concat([header, content, padding]);
}

export const tarTrailer = (): Buffer => Buffer.alloc(trailerBytes);

/** An entry's data length as its header gives it (octal, or base-256 past 8 GiB), padded to whole blocks. */
function paddedDataBytes(header: Buffer): number {
  const field = header.subarray(124, 136);
  let size = 0;
  if (field[0]! & 0x80) {
    for (let i = 1; i < field.length; i++) size = size * 256 + field[i]!;
  } else {
    size = parseInt(field.toString('ascii').replace(/[\0 ]+$/, '').trim() || '0', 8);
  }
  if (!Number.isSafeInteger(size) || size < 0) throw new Error('a tar header has an unreadable size');
  return Math.ceil(size / block) * block;
}

const isZero = (bytes: Buffer) => bytes.every((byte) => byte === 0);

/**
 * Passes tar archives that follow one another in a stream through as one archive: every end-of-archive
 * marker and record padding between them is dropped, and one marker ends the whole. A backup's archive is
 * stored that way (the data directory as GNU tar wrote it, then backup_label and the WAL, known only after):
 * `tar -x --ignore-zeros` reads it as it is, a plain `tar -x` needs it joined. Markers are found by walking the
 * entries' headers (a file's own data may end in zero blocks): zero blocks where a header is due.
 */
export class TarJoiner extends Transform {
  /** The start of a header cut by a chunk boundary: held until it is whole. */
  private held: Buffer | undefined;
  /** Bytes of the current entry's data still to pass. */
  private dataLeft = 0;
  /** Whether the last block where a header was due held zeros: an archive ended there, maybe not the last. */
  private atMarker = false;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const bytes = this.held ? Buffer.concat([this.held, chunk]) : chunk;
    this.held = undefined;
    let at = 0;
    /** Where the bytes not yet pushed start: zero blocks at a header position are skipped, not pushed. */
    let from = 0;
    while (at < bytes.length) {
      if (this.dataLeft > 0) {
        const step = Math.min(this.dataLeft, bytes.length - at);
        at += step;
        this.dataLeft -= step;
      } else if (bytes.length - at < block) {
        this.held = Buffer.from(bytes.subarray(at));
        break;
      } else {
        const header = bytes.subarray(at, at + block);
        if (isZero(header)) {
          if (at > from) this.push(bytes.subarray(from, at));
          at += block;
          from = at;
          this.atMarker = true;
        } else {
          this.atMarker = false;
          this.dataLeft = paddedDataBytes(header);
          at += block;
        }
      }
    }
    if (at > from) this.push(bytes.subarray(from, at));
    callback();
  }

  override _flush(callback: TransformCallback): void {
    if (!this.atMarker || this.held || this.dataLeft > 0) {
      callback(new Error('the tar stream did not end with an end-of-archive marker'));
      return;
    }
    this.push(tarTrailer());
    callback();
  }
}
