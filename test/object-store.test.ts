import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ObjectStore, sha256Of, zones } from '../agent/backups/store.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dbplane-object-store-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe('sha256Of', () => {
  it('hashes a file over several read pieces, an empty one, and refuses a missing one', async () => {
    const body = randomBytes(3 * 1024 * 1024 + 12_345);
    await writeFile(join(dir, 'body'), body);
    await writeFile(join(dir, 'empty'), '');
    expect(await sha256Of(join(dir, 'body'))).toBe(sha256(body));
    expect(await sha256Of(join(dir, 'empty'))).toBe(sha256(Buffer.alloc(0)));
    await expect(sha256Of(join(dir, 'missing'))).rejects.toMatchObject({ code: 'ENOENT' });
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
  /** Opens the copy being written in `zone` (its temp file) on its own descriptor. */
  async function tempOf(store: ObjectStore, zone: string, key: string) {
    const path = store.path(zone, key);
    const temp = (await readdir(dirname(path))).find((name) => name.startsWith('one.tmp-'))!;
    return open(join(dirname(path), temp), 'r+');
  }
  /** Flips one byte of the copy being written in `zone`. */
  async function flip(store: ObjectStore, zone: string, key: string, offset: number) {
    const file = await tempOf(store, zone, key);
    const byte = Buffer.alloc(1);
    await file.read(byte, 0, 1, offset);
    byte[0] ^= 0xff;
    await file.write(byte, 0, 1, offset);
    await file.close();
  }
  /** Writes `mib` MiB of random data into a store, calling `meddle` after each MiB is written (i: its index). */
  async function putWith(store: ObjectStore, key: string, mib: number, meddle: (i: number) => Promise<void>) {
    const sent: Buffer[] = [];
    async function* source() {
      for (let i = 0; i < mib; i++) {
        const piece = randomBytes(1024 * 1024);
        sent.push(piece);
        yield piece;
        // Back here, the piece is written: every copy holds i + 1 MiB.
        await meddle(i);
      }
    }
    const result = await store.put(key, source());
    return { result, body: Buffer.concat(sent) };
  }
  const onDisk = async (store: ObjectStore, zone: string, key: string) => sha256(await readFile(store.path(zone, key)));

  it('reports a copy altered before its first flush and one altered between two flushes bad, with their own SHA-256', async () => {
    const store = new ObjectStore(join(dir, 'altered'));
    const key = 'db/base/one';
    const mib = 1024 * 1024;
    const { result, body } = await putWith(store, key, 140, async (i) => {
      if (i === 2) await flip(store, 'zone-b', key, 10);
      if (i === 100) await flip(store, 'zone-c', key, 99 * mib + 5);
    });
    expect(result.sha256).toBe(sha256(body));
    expect(result.copies).toEqual([
      { zone: 'zone-a', sha256: sha256(body), ok: true },
      { zone: 'zone-b', sha256: await onDisk(store, 'zone-b', key), ok: false },
      { zone: 'zone-c', sha256: await onDisk(store, 'zone-c', key), ok: false },
    ]);
    expect(await onDisk(store, 'zone-b', key)).not.toBe(sha256(body));
  });

  it('reports a copy cut short once written and one grown past the end bad, with their own SHA-256', async () => {
    const store = new ObjectStore(join(dir, 'resized'));
    const key = 'db/base/one';
    const { result, body } = await putWith(store, key, 70, async (i) => {
      if (i === 69) {
        const file = await tempOf(store, 'zone-a', key);
        await file.truncate(10 * 1024 * 1024);
        await file.close();
      }
      if (i === 50) {
        const file = await tempOf(store, 'zone-c', key);
        await file.write(Buffer.from('past the end'), 0, 12, 200 * 1024 * 1024);
        await file.close();
      }
    });
    expect(result.copies).toEqual([
      { zone: 'zone-a', sha256: await onDisk(store, 'zone-a', key), ok: false },
      { zone: 'zone-b', sha256: sha256(body), ok: true },
      { zone: 'zone-c', sha256: await onDisk(store, 'zone-c', key), ok: false },
    ]);
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
