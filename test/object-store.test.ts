import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ObjectStore, sha256sOf, zones } from '../agent/backups/store.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dbplane-object-store-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe('sha256sOf (copies read back side by side)', () => {
  // Over three read pieces (1 MiB each), so copies can part ways in the middle.
  const original = randomBytes(3 * 1024 * 1024 + 12_345);

  it('gives every file its own SHA-256, whether it matches the others, differs in one byte, is cut short, longer, or missing', async () => {
    const flipped = Buffer.from(original);
    flipped[2 * 1024 * 1024 + 7] ^= 0xff;
    const files: Record<string, Buffer> = {
      same: original,
      sameAgain: original,
      flipped,
      short: original.subarray(0, 1024 * 1024),
      longer: Buffer.concat([original, Buffer.from('tail')]),
      empty: Buffer.alloc(0),
    };
    // The first file is the one the others are compared with: each order must give the same answers.
    for (const first of Object.keys(files)) {
      const names = [first, ...Object.keys(files).filter((name) => name !== first)];
      for (const name of names) await writeFile(join(dir, name), files[name]);
      const digests = await sha256sOf([...names.map((name) => join(dir, name)), join(dir, 'missing')]);
      for (const name of names) expect(digests.get(join(dir, name)), `${name}, compared with ${first}`).toBe(sha256(files[name]));
      expect(digests.get(join(dir, 'missing'))).toMatchObject({ code: 'ENOENT' });
    }
  });
});

describe('ObjectStore.put', () => {
  it('reports each copy good, with the SHA-256 of what was sent', async () => {
    const store = new ObjectStore(join(dir, 'store'));
    const body = randomBytes(2 * 1024 * 1024 + 1);
    const result = await store.put('db/base/one', Readable.from([body.subarray(0, 1000), body.subarray(1000)]));
    expect(result).toEqual({ sha256: sha256(body), sizeBytes: body.length, copies: zones.map((zone) => ({ zone, sha256: sha256(body), ok: true })) });
  });
});
