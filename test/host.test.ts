import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { missingCommands } from '../agent/host.ts';

describe('the commands the agent needs on its PATH', () => {
  let dirs: string[];

  beforeAll(async () => {
    dirs = await Promise.all([0, 1].map(() => mkdtemp(join(tmpdir(), 'dbplane-path-'))));
    const executable = async (dir: string, name: string) => {
      await writeFile(join(dir, name), '#!/bin/sh\n');
      await chmod(join(dir, name), 0o755);
    };
    await executable(dirs[0], 'tar');
    await executable(dirs[1], 'zstd');
    await writeFile(join(dirs[1], 'curl'), 'not executable');
  });

  afterAll(async () => {
    await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  });

  it('names each one missing, across every folder of the PATH, and only executables count', async () => {
    expect(missingCommands(dirs.join(delimiter))).toEqual(['curl']);
    expect(missingCommands(dirs[0])).toEqual(['zstd', 'curl']);
    expect(missingCommands('')).toEqual(['tar', 'zstd', 'curl']);
    await chmod(join(dirs[1], 'curl'), 0o755);
    expect(missingCommands(dirs.join(delimiter))).toEqual([]);
  });

  it('finds them all on this machine, as the agent does at start', () => {
    expect(missingCommands()).toEqual([]);
  });
});
