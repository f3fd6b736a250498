import { execFileSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writtenBackWhile } from '../agent/backups/writeback.ts';

let dir: string;
let calls: string;
const path = process.env.PATH;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dbplane-writeback-'));
  // `sync` as the agent finds it on its PATH: the real one, slowed down (as by a lot to write back), with each call's
  // start and end written down.
  const bin = join(dir, 'bin');
  calls = join(dir, 'calls');
  await mkdir(bin);
  const sync = execFileSync('sh', ['-c', 'command -v sync']).toString().trim();
  await writeFile(join(bin, 'sync'), `#!/bin/sh\necho "start $*" >> ${calls}\n${sync} "$@"\nsleep 0.2\necho end >> ${calls}\n`);
  await chmod(join(bin, 'sync'), 0o755);
  process.env.PATH = `${bin}:${path}`;
});
afterAll(async () => {
  process.env.PATH = path;
  await rm(dir, { recursive: true, force: true });
});

const logged = async () => (await readFile(calls, 'utf8').catch(() => '')).split('\n').filter(Boolean);

describe('writtenBackWhile', () => {
  it('syncs the file system of the folder over and over while the work runs', async () => {
    await writeFile(calls, '');
    const data = join(dir, 'data');
    await mkdir(data);
    const syncsSeen = await writtenBackWhile(data, async () => {
      for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(20)) {
        const ended = (await logged()).filter((line) => line === 'end').length;
        if (ended >= 2) return ended;
      }
      return 0;
    });
    expect(syncsSeen).toBeGreaterThanOrEqual(2);
    const lines = await logged();
    expect(lines.filter((line) => line === `start -f ${data}`)).toHaveLength(lines.filter((line) => line.startsWith('start')).length);
    expect(lines.filter((line) => line.startsWith('start'))).toHaveLength(lines.filter((line) => line === 'end').length);
  });

  it('rethrows what the work threw, after its last sync ended', async () => {
    await writeFile(calls, '');
    await expect(writtenBackWhile(dir, async () => { throw new Error('untar failed'); })).rejects.toThrow('untar failed');
    const lines = await logged();
    expect(lines).toEqual([`start -f ${dir}`, 'end']);
  });

  it('returns once the work ends, not at the end of the pause between two syncs', async () => {
    await writeFile(calls, '');
    const started = Date.now();
    await writtenBackWhile(dir, async () => {
      while (!(await logged()).includes('end')) await sleep(20);
    }, { pauseMs: 60_000 });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await logged()).toEqual([`start -f ${dir}`, 'end']);
  });
});
