// The archive_command and restore_command of a server managed by the dbplane agent, run by the
// server's user with the agent's own node binary (no dependencies):
//   node wal-command.mjs push <url> <path> <token file>   POSTs the file; exit 0 only once the agent stored every copy
//   node wal-command.mjs fetch <url> <path> <token file>  GETs the file into <path>; exit 1 when the archive lacks it
// The per-database token is read from a file only the server's user can read, never passed in argv
// (any local user can read a process's argv in /proc).
import { readFile, writeFile } from 'node:fs/promises';

const [mode, url, path, tokenFile] = process.argv.slice(2);
if (!tokenFile || !url || !path || (mode !== 'push' && mode !== 'fetch')) {
  process.stderr.write('usage: wal-command.mjs push|fetch <url> <path> <token file>\n');
  process.exit(2);
}
const token = (await readFile(tokenFile, 'utf8')).trim();
const headers = { authorization: `Bearer ${token}` };
const signal = AbortSignal.timeout(300_000);

try {
  if (mode === 'push') {
    const body = await readFile(path);
    const response = await fetch(url, { method: 'POST', headers: { ...headers, 'content-type': 'application/octet-stream' }, body, signal });
    if (!response.ok) throw new Error(`the agent answered ${response.status}: ${await response.text()}`);
  } else {
    const response = await fetch(url, { headers, signal });
    if (response.status === 404) process.exit(1);
    if (!response.ok) throw new Error(`the agent answered ${response.status}: ${await response.text()}`);
    await writeFile(path, Buffer.from(await response.arrayBuffer()));
  }
} catch (error) {
  process.stderr.write(`dbplane wal ${mode} ${path}: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
