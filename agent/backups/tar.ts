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

/**
 * Passes a tar stream written with a 512-byte record (`tar -b 1`, so it ends with exactly two zero
 * blocks) through without its end-of-archive marker, then appends what `finish` returns (more
 * entries) and a new marker: one archive, with files known only once the first part was read.
 */
export class TarAppender extends Transform {
  private held: Buffer = Buffer.alloc(0);

  constructor(private readonly finish: () => Promise<Buffer[]>) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const all = Buffer.concat([this.held, chunk]);
    if (all.length > trailerBytes) {
      this.push(all.subarray(0, all.length - trailerBytes));
      this.held = Buffer.from(all.subarray(all.length - trailerBytes));
    } else {
      this.held = all;
    }
    callback();
  }

  override _flush(callback: TransformCallback): void {
    if (this.held.length !== trailerBytes || this.held.some((byte) => byte !== 0)) {
      callback(new Error('the tar stream did not end with an end-of-archive marker'));
      return;
    }
    this.finish().then((entries) => {
      for (const entry of entries) this.push(entry);
      this.push(tarTrailer());
      callback();
    }, (error: Error) => callback(error));
  }
}
