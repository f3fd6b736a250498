import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants, createReadStream, createWriteStream, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDecryptor, createEncryptor, decryptFile } from '../agent/backups/crypto.ts';
import { tarFromZstd } from '../agent/backups/service.ts';
import { median } from './timing.ts';

/**
 * `npm run bench:restore-floor`: the CPU a restore's unpacking costs, stage by stage, against the raw
 * untar it is compared with (bench/backups.ts), on BENCH_FLOOR_MB (default 1200) MB of relation-like
 * files of random hex text (it compresses ~2:1, like the bench database's rows).
 *
 * A restore has to read a sealed copy, decrypt it, decompress it and untar it (and hash it, for backups
 * sealed before their names were bound to their GCM tags); the raw baseline only untars. CPU time (user +
 * system) barely moves with the load of other runs, unlike wall time, so the sum of the stages divided by
 * the cores is a floor no pipelining can beat on this machine.
 *
 * Then the agent's pipeline followed by the syncfs PostgreSQL does before recovery: BENCH_FLOOR_ROUNDS (default 3)
 * rounds, median. (A write-back syncing the folder every 0.1–0.5 s while it was unpacked was compared here until it
 * was removed: on a 2-core EPYC VM it never paid; agent/backups/writeback.ts at c419e73.)
 */

const totalMb = Number(process.env.BENCH_FLOOR_MB ?? 1200);
const syncedRounds = Number(process.env.BENCH_FLOOR_ROUNDS ?? 3);
const fileMb = 100;
const key = randomBytes(32);

interface Cost { wallS: number; cpuS: number }

/** Wall and CPU (user + system) of a command, as GNU time reports them. */
function commandCost(command: string): Cost {
  execFileSync('sync');
  const run = spawnSync('/usr/bin/time', ['-f', '%e %U %S', 'sh', '-c', command], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (run.status !== 0) throw new Error(`${command} failed: ${run.stderr}`);
  const [wall, user, system] = run.stderr.toString().trim().split('\n').at(-1)!.split(' ').map(Number);
  return { wallS: wall, cpuS: user + system };
}

/** Wall and CPU of this process while `work` runs (nothing else runs in it meanwhile). */
async function processCost(work: () => Promise<unknown>): Promise<Cost> {
  execFileSync('sync');
  const cpu = process.cpuUsage();
  const start = performance.now();
  await work();
  const used = process.cpuUsage(cpu);
  return { wallS: (performance.now() - start) / 1000, cpuS: (used.user + used.system) / 1e6 };
}

const sink = () => new Writable({ write: (_chunk, _encoding, done) => done() });

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dbplane-floor-'));
  try {
    const data = join(dir, 'data', 'base', '5');
    mkdirSync(data, { recursive: true });
    for (let i = 0; i < totalMb / fileMb; i++) writeFileSync(join(data, String(16384 + i)), randomBytes((fileMb * 1024 ** 2) / 2).toString('hex'));
    const raw = join(dir, 'raw.tar');
    const zst = join(dir, 'backup.tar.zst');
    const sealed = `${zst}.enc`;
    execFileSync('sh', ['-c', `tar -cf ${raw} -C ${dir}/data . && zstd -1 -q -T1 -o ${zst} ${raw}`]);
    await pipeline(createReadStream(zst, { highWaterMark: 1024 ** 2 }), createEncryptor(key, 1, 'backup'), createWriteStream(sealed));
    const untarInto = (name: string) => { const into = join(dir, name); mkdirSync(into); return into; };

    const hash = await processCost(() => pipeline(createReadStream(sealed, { highWaterMark: 1024 ** 2 }), createHash('sha256'), sink()));
    const stages: [string, Cost][] = [
      ['read the copy and decrypt it (AES-256-GCM, in the agent)', await processCost(() => pipeline(
        createReadStream(sealed, { highWaterMark: 1024 ** 2 }), createDecryptor(() => key, 'bench', 'backup'), sink(),
      ))],
      ['decompress it (zstd -d)', commandCost(`zstd -d -c -q ${zst} > /dev/null`)],
      ['untar it (tar -x -b 2048)', commandCost(`tar -x -b 2048 -f ${raw} -C ${untarInto('stage')}`)],
    ];
    const rawUntar = commandCost(`tar -x -f ${raw} -C ${untarInto('raw')}`);
    // The agent's own pipeline (service.ts untar): this process decrypts while zstd -d | tar -x run beside it, reading
    // the copy itself (decryptFile, what restores do) or, as before, through a file stream and createDecryptor.
    const unpackedBy = async (name: string, decrypted: () => Promise<unknown[]>): Promise<Cost> => processCost(async () => {
      const tar = tarFromZstd(['-x', '-b', '2048', '-f', '-', '-C', untarInto(name)], undefined);
      tar.output.resume();
      await Promise.all([(pipeline as (...streams: unknown[]) => Promise<void>)(...await decrypted(), tar.input), tar.exited]);
    });
    const copy = await open(sealed, constants.O_RDONLY | constants.O_DIRECT); // as restores read a copy
    const pipelines: [string, Cost][] = [
      ['decryptFile (aligned blocks, direct I/O)', await unpackedBy('pipeline', async () => [decryptFile(copy, () => key, 'bench', 'backup')])],
      ['a file stream through createDecryptor', await unpackedBy('pipeline-stream', async () => [createReadStream(sealed, { highWaterMark: 1024 ** 2 }), createDecryptor(() => key, 'bench', 'backup')])],
    ];

    // Unpacked, then synced as PostgreSQL does before recovery (syncfs).
    const syncedRuns: number[] = [];
    for (let round = 0; round < syncedRounds; round++) {
      const into = untarInto(`synced-${round}`);
      execFileSync('sync');
      const start = performance.now();
      const tar = tarFromZstd(['-x', '-b', '2048', '-f', '-', '-C', into], undefined);
      tar.output.resume();
      await Promise.all([pipeline(decryptFile(copy, () => key, 'bench', 'backup'), tar.input), tar.exited]);
      execFileSync('sync', ['-f', into]);
      syncedRuns.push(performance.now() - start);
      rmSync(into, { recursive: true, force: true });
    }
    await copy.close();
    const cpuSum = stages.reduce((sum, [, cost]) => sum + cost.cpuS, 0);
    const cores = cpus().length;

    const line = (what: string, cost: Cost) => `| ${what} | ${cost.wallS.toFixed(2)} s | ${cost.cpuS.toFixed(2)} s |`;
    console.log(`Run: ${new Date().toISOString()} — ${cores} × ${cpus()[0].model}, node ${process.version}, load average ${(await import('node:os')).loadavg().map((l) => l.toFixed(1)).join(' ')}`);
    console.log(`Data: ${totalMb} MB of files (tar ${(statSync(raw).size / 1e6).toFixed(0)} MB), sealed copy ${(statSync(sealed).size / 1e6).toFixed(0)} MB\n`);
    console.log('| stage | wall | CPU (user + system) |\n|---|---|---|');
    for (const [what, cost] of stages) console.log(line(what, cost));
    console.log(line('(format 1 backups only) read the copy and hash it (SHA-256, in the agent)', hash));
    console.log(line('raw untar (tar -x), the baseline', rawUntar));
    const floor = (cpu: number) => `${cpu.toFixed(2)} s of CPU: on ${cores} cores at best ${(cpu / cores).toFixed(2)} s of wall, at most ${(rawUntar.wallS / (cpu / cores)).toFixed(2)}× of the raw untar`;
    console.log(`\nUnpacking a backup sealed with its name: ${floor(cpuSum)}.`);
    console.log(`With the SHA-256 pass as well (format 1): ${floor(cpuSum + hash.cpuS)}.`);
    for (const [how, cost] of pipelines) {
      console.log(`The agent's pipeline (decrypt | zstd -d | tar -x, all at once), ${how}: ${cost.wallS.toFixed(2)} s of wall, ${(rawUntar.wallS / cost.wallS).toFixed(2)}× of the raw untar; this process's CPU ${cost.cpuS.toFixed(2)} s.`);
    }
    const synced = syncedRuns.map((ms) => (ms / 1000).toFixed(2));
    console.log(`The agent's pipeline, then syncfs: ${(median(syncedRuns) / 1000).toFixed(2)} s (median of ${synced.join(', ')}).`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
