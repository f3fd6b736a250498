import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
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

describe('ObjectStore.put, copies that go bad while written', () => {
  /** Flips one byte of the copy being written in `zone` (its temp file). */
  async function flip(store: ObjectStore, zone: string, key: string, offset: number) {
    const path = store.path(zone, key);
    const temp = (await readdir(dirname(path))).find((name) => name.startsWith('one.tmp-'))!;
    const file = await open(join(dirname(path), temp), 'r+');
    const byte = Buffer.alloc(1);
    await file.read(byte, 0, 1, offset);
    byte[0] ^= 0xff;
    await file.write(byte, 0, 1, offset);
    await file.close();
  }

  it('reports a copy altered before its first flush and one altered between two flushes (64 MiB apart) bad, with their own SHA-256', async () => {
    const store = new ObjectStore(join(dir, 'altered'));
    const key = 'db/base/one';
    const mib = 1024 * 1024;
    const sent: Buffer[] = [];
    async function* source() {
      for (let i = 0; i < 140; i++) {
        const piece = randomBytes(mib);
        sent.push(piece);
        yield piece;
        // Back here, the piece is written: every copy holds i + 1 MiB.
        if (i === 2) await flip(store, 'zone-b', key, 10);
        if (i === 100) await flip(store, 'zone-c', key, 99 * mib + 5);
      }
    }
    const result = await store.put(key, source());
    const body = Buffer.concat(sent);
    expect(result.sha256).toBe(sha256(body));
    const onDisk = async (zone: string) => sha256(await readFile(store.path(zone, key)));
    expect(result.copies).toEqual([
      { zone: 'zone-a', sha256: sha256(body), ok: true },
      { zone: 'zone-b', sha256: await onDisk('zone-b'), ok: false },
      { zone: 'zone-c', sha256: await onDisk('zone-c'), ok: false },
    ]);
    expect(await onDisk('zone-b')).not.toBe(sha256(body));
  });

  it('reports a zone that cannot be written bad, and the others good', async () => {
    const root = join(dir, 'unwritable');
    const store = new ObjectStore(root);
    await mkdir(root);
    await writeFile(join(root, 'zone-c'), 'a file where the zone folder should be');
    const body = randomBytes(3 * 1024 * 1024);
    const result = await store.put('db/base/one', Readable.from([body]));
    expect(result.copies).toEqual([
      { zone: 'zone-a', sha256: sha256(body), ok: true },
      { zone: 'zone-b', sha256: sha256(body), ok: true },
      { zone: 'zone-c', sha256: '', ok: false },
    ]);
  });
});
