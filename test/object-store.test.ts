import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, readlink, rm, writeFile, type FileHandle } from 'node:fs/promises';
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

/** The flags of every descriptor of this process open on `file` (from /proc/self/fdinfo). */
async function openFlags(file: string): Promise<number[]> {
  const flags: number[] = [];
  for (const fd of await readdir('/proc/self/fd')) {
    if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) !== file) continue;
    const info = await readFile(`/proc/self/fdinfo/${fd}`, 'utf8').catch(() => '');
    const octal = /^flags:\s+([0-7]+)$/m.exec(info)?.[1];
    if (octal) flags.push(parseInt(octal, 8));
  }
  return flags;
}

/** Does `meddle` to a file on a descriptor of its own, as a failing disk or another process would. */
async function meddleWith(file: string, meddle: (handle: FileHandle) => Promise<void>): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await meddle(handle);
  } finally {
    await handle.close();
  }
}
const flipAt = (offset: number) => async (file: FileHandle) => {
  const byte = Buffer.alloc(1);
  await file.read(byte, 0, 1, offset);
  byte[0] ^= 0xff;
  await file.write(byte, 0, 1, offset);
};

describe('ObjectStore.put', () => {
  it('reports each copy good, with the SHA-256 of what was sent', async () => {
    const store = new ObjectStore(join(dir, 'store'));
    const body = randomBytes(2 * 1024 * 1024 + 1);
    const result = await store.put('db/base/one', Readable.from([body.subarray(0, 1000), body.subarray(1000)]));
    expect(result).toEqual({ sha256: sha256(body), sizeBytes: body.length, copies: zones.map((zone) => ({ zone, sha256: sha256(body), ok: true })) });
    for (const zone of zones) expect(await readFile(store.path(zone, 'db/base/one'))).toEqual(body);
  });

  it('writes and reads back each copy past the page cache (O_DIRECT), and stores an object of whole blocks and one of none', async () => {
    const seen: number[][] = [];
    const store = new ObjectStore(join(dir, 'direct'), { beforeReadBack: async ({ file }) => { seen.push(await openFlags(file)); } });
    const body = randomBytes(8 * 1024 * 1024);
    const whole = await store.put('db/base/whole', Readable.from([body]));
    const empty = await store.put('db/base/empty', Readable.from([]));
    expect(whole.copies.every((copy) => copy.ok)).toBe(true);
    expect(empty).toEqual({ sha256: sha256(Buffer.alloc(0)), sizeBytes: 0, copies: zones.map((zone) => ({ zone, sha256: sha256(Buffer.alloc(0)), ok: true })) });
    expect(await readFile(store.path('zone-c', 'db/base/whole'))).toEqual(body);
    // Two blocks, three copies; the writer and the reader of each.
    expect(seen).toHaveLength(6);
    for (const flags of seen) expect(flags.map((f) => f & constants.O_DIRECT)).toEqual([constants.O_DIRECT, constants.O_DIRECT]);
  });

  it('stores through the page cache, each block synced before its read-back, without direct I/O', async () => {
    const seen: number[][] = [];
    const root = join(dir, 'buffered');
    const store = new ObjectStore(root, {
      directIo: false,
      beforeReadBack: async ({ zone, file }, position) => {
        seen.push(await openFlags(file));
        if (zone === 'zone-b' && position > 0) await meddleWith(file, flipAt(position));
      },
    });
    const body = randomBytes(5 * 1024 * 1024 + 7);
    const result = await store.put('db/base/one', Readable.from([body]));
    expect(result.copies).toEqual([
      { zone: 'zone-a', sha256: sha256(body), ok: true },
      { zone: 'zone-b', sha256: '', ok: false },
      { zone: 'zone-c', sha256: sha256(body), ok: true },
    ]);
    expect(await readFile(store.path('zone-a', 'db/base/one'))).toEqual(body);
    expect(seen).toHaveLength(6);
    for (const flags of seen) expect(flags.map((f) => f & constants.O_DIRECT)).toEqual([0, 0]);
  });

  it('leaves nothing behind when the source fails', async () => {
    const store = new ObjectStore(join(dir, 'failing'));
    async function* source() {
      yield randomBytes(9 * 1024 * 1024);
      throw new Error('the source broke');
    }
    await expect(store.put('db/base/one', source())).rejects.toThrow('the source broke');
    for (const zone of zones) expect(await readdir(join(dir, 'failing', zone, 'db/base'))).toEqual([]);
  });
});

describe('ObjectStore.put, copies that go bad between their write and its read-back', () => {
  const mib = 1024 * 1024;
  /** Does `meddle` to a copy's file once `at` bytes into it are written, before they are read back. */
  function storeMeddledWith(root: string, meddles: Record<string, { at: number; meddle: (file: FileHandle) => Promise<void> }>) {
    return new ObjectStore(root, {
      beforeReadBack: async ({ zone, file }, position, length) => {
        const meddling = meddles[zone];
        if (!meddling || meddling.at < position || meddling.at >= position + length) return;
        await meddleWith(file, meddling.meddle);
      },
    });
  }
  const zoneFiles = async (root: string, zone: string) => readdir(join(root, zone, 'db/base'));

  it('reports a copy altered in its first block and one altered in a later block bad, and removes them', async () => {
    const root = join(dir, 'altered');
    const store = storeMeddledWith(root, { 'zone-b': { at: 10, meddle: flipAt(10) }, 'zone-c': { at: 99 * mib + 5, meddle: flipAt(99 * mib + 5) } });
    const body = randomBytes(140 * mib);
    const result = await store.put('db/base/one', Readable.from([body.subarray(0, 70 * mib), body.subarray(70 * mib)]));
    expect(result.sha256).toBe(sha256(body));
    expect(result.copies).toEqual([
      { zone: 'zone-a', sha256: sha256(body), ok: true },
      { zone: 'zone-b', sha256: '', ok: false },
      { zone: 'zone-c', sha256: '', ok: false },
    ]);
    expect(await zoneFiles(root, 'zone-b')).toEqual([]);
    expect(await zoneFiles(root, 'zone-c')).toEqual([]);
    expect(sha256(await readFile(store.path('zone-a', 'db/base/one')))).toBe(sha256(body));
  });

  it('reports a copy cut short and one grown past the end bad', async () => {
    const root = join(dir, 'resized');
    const store = storeMeddledWith(root, {
      'zone-a': { at: 64 * mib, meddle: (file) => file.truncate(10 * mib) },
      'zone-c': { at: 50 * mib, meddle: async (file) => { await file.write(Buffer.from('past the end'), 0, 12, 200 * mib); } },
    });
    const body = randomBytes(70 * mib + 3);
    const result = await store.put('db/base/one', Readable.from([body]));
    expect(result.copies).toEqual([
      { zone: 'zone-a', sha256: '', ok: false },
      { zone: 'zone-b', sha256: sha256(body), ok: true },
      { zone: 'zone-c', sha256: '', ok: false },
    ]);
    expect(await zoneFiles(root, 'zone-a')).toEqual([]);
    expect(await zoneFiles(root, 'zone-c')).toEqual([]);
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
