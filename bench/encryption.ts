import { execFileSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createEncryptor } from '../agent/backups/crypto.ts';
import { agentNodeFlags } from '../agent/spawn.ts';
import { median } from './timing.ts';

/**
 * `npm run bench:encryption`: what sealing a backup costs over the cipher itself, on 1 GiB in memory, each
 * BENCH_ENCRYPTION_ROUNDS (default 3) times, alternated, medians:
 *  - the raw cipher: AES-256-GCM through createCipheriv, in the 64 KiB updates crypto.ts makes, a fresh cipher per MiB;
 *  - createEncryptor: the same work as a stream, with the chunking, the AAD and the tags.
 * A process of its own, with the agent's node flags (agent/spawn.ts), as the agent encrypts: run without them, it
 * runs itself again with them; `npm run bench:backups` runs it so too. Timed inside that bench's own process, beside the runtime, the stream gave 0.75–0.93 GB/s.
 * Prints two markdown table rows: what, time, throughput, ratio vs the raw cipher.
 */

if (!agentNodeFlags.every((flag) => process.execArgv.includes(flag))) {
  execFileSync(process.execPath, [...agentNodeFlags, '--import', import.meta.resolve('tsx'), fileURLToPath(import.meta.url)], { stdio: 'inherit' });
  process.exit(0);
}

const rounds = Number(process.env.BENCH_ENCRYPTION_ROUNDS ?? 3);
const gib = 1024 ** 3;
const block = randomBytes(16 * 1024 * 1024);
const blocks = gib / block.length;
const key = randomBytes(32);

function rawCipher(): void {
  const updateBytes = 64 * 1024;
  for (let i = 0; i < blocks; i++) {
    for (let mib = 0; mib < block.length; mib += 1024 * 1024) {
      const cipher = createCipheriv('aes-256-gcm', key, randomBytes(12));
      for (let at = mib; at < mib + 1024 * 1024; at += updateBytes) cipher.update(block.subarray(at, at + updateBytes));
      cipher.final();
      cipher.getAuthTag();
    }
  }
}

const encryptor = () => pipeline(
  Readable.from((function* () { for (let i = 0; i < blocks; i++) yield block; })()),
  createEncryptor(key, 1, 'bench/encryption'),
  new Writable({ write: (_chunk, _encoding, done) => done() }),
);

async function timedMs(work: () => unknown): Promise<number> {
  const start = performance.now();
  await work();
  return performance.now() - start;
}

const raw: number[] = [];
const sealed: number[] = [];
for (let round = 0; round < rounds; round++) {
  raw.push(await timedMs(rawCipher));
  sealed.push(await timedMs(encryptor));
}
const row = (what: string, runs: number[], ratio: string) =>
  `| ${what} (median of ${runs.map((ms) => (ms / 1000).toFixed(2)).join(', ')} s) | ${(median(runs) / 1000).toFixed(2)} s | ${(gib / 1e6 / (median(runs) / 1000)).toFixed(0)} MB/s | ${ratio} |`;
console.log(row('AES-256-GCM alone (createCipheriv, 64 KiB updates), 1 GiB in memory', raw, '1'));
console.log(row('AES-256-GCM chunked encryption (createEncryptor, a stream), 1 GiB in memory', sealed, `${(median(raw) / median(sealed)).toFixed(2)}×`));
