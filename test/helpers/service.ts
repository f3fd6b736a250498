import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

/** The service as a user runs it (`npm start`'s command), in its own process group, for stop/kill/restart tests. */

const root = resolve(import.meta.dirname, '../..');

export async function startService(dataDir: string) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'local/main.ts'], {
    cwd: root,
    detached: true,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, DBPLANE_DATA_DIR: dataDir, DBPLANE_PORT: '0', PATH: `${join(root, 'node_modules/.bin')}:${process.env.PATH}` },
  });
  const exited = once(child, 'exit');
  const apiUrl = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error('the service did not start in 90 s')), 90_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const match = /API:\s+(\S+)/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]);
      }
    });
    child.once('exit', (code) => reject(new Error(`the service exited with ${code}`)));
  });
  return {
    apiUrl,
    pid: child.pid!,
    adminToken: readFileSync(join(dataDir, 'admin.token'), 'utf8').trim(),
    /** What a user's Ctrl-C does. */
    async stop() {
      process.kill(-child.pid!, 'SIGINT');
      await exited;
    },
    /** The service dies at once; its children (DynamoDB Local, the agent) do not get to clean up. */
    async kill() {
      process.kill(child.pid!, 'SIGKILL');
      await exited;
    },
  };
}
