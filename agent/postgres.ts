import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFile, chmod, chown, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { PostgresSettings } from '#core/catalog.ts';
import type { PostgresInstall } from './host.ts';

const execFileAsync = promisify(execFile);

export const systemUser = 'dbplane-pg';
export const adminRole = 'dbplane_admin';

/** Who initdb and postgres run as; undefined means the agent's own user. */
export interface RunAs {
  uid: number;
  gid: number;
}

/** Where one server keeps its files. */
export interface ServerPaths {
  data: string;
  log: string;
  /** Kept short (see instances.ts): a unix socket path is limited to 107 bytes. */
  socket: string;
}

/** initdb and postgres refuse to run as root, so a root agent runs them as a dedicated system user. */
export async function resolveRunAs(): Promise<RunAs | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  if (!(await userExists())) {
    // Another agent on the host may create the user at the same moment: only its absence afterwards is an error.
    await execFileAsync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', systemUser]).catch(async (error) => {
      if (!(await userExists())) throw error;
    });
  }
  const [uid, gid] = await Promise.all([execFileAsync('id', ['-u', systemUser]), execFileAsync('id', ['-g', systemUser])]);
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/**
 * The server's user must be able to pass through every folder above its data and its binaries. A
 * temp folder (mkdtemp, `mktemp -d`) or a checkout under one is 0700: add only the search bit (o+x),
 * which lets a user through without letting it list anything.
 */
export async function ensureTraversable(path: string, runAs: RunAs | undefined, log: (message: string, path: string) => void): Promise<void> {
  if (!runAs) return;
  const ancestors: string[] = [];
  for (let dir = resolve(path); ; dir = dirname(dir)) {
    ancestors.push(dir);
    if (dir === dirname(dir)) break;
  }
  for (const dir of ancestors) {
    const { mode, uid } = await stat(dir);
    if (uid === runAs.uid || mode & 0o001) continue;
    await chmod(dir, (mode & 0o7777) | 0o001);
    log('made a folder traversable for the server user (o+x)', dir);
  }
}

function userExists(): Promise<boolean> {
  return execFileAsync('id', [systemUser]).then(() => true, () => false);
}

/** A directory only the server's user can enter. */
export async function makePrivateDir(path: string, runAs: RunAs | undefined): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
  if (runAs) await chown(path, runAs.uid, runAs.gid);
}

async function writeOwnedFile(path: string, content: string, runAs: RunAs | undefined): Promise<void> {
  await writeFile(path, content, { mode: 0o600 });
  if (runAs) await chown(path, runAs.uid, runAs.gid);
}

function processOptions(install: PostgresInstall, runAs: RunAs | undefined) {
  return {
    env: { PATH: process.env.PATH, LD_LIBRARY_PATH: install.libDir, LC_ALL: 'C.UTF-8' },
    ...(runAs ?? {}),
  };
}

/**
 * Creates the cluster in a scratch directory and renames it into place once it is complete, so a
 * crash midway never leaves a half-initialized data directory that looks usable.
 */
export async function initCluster(install: PostgresInstall, paths: ServerPaths, runAs: RunAs | undefined): Promise<void> {
  const scratch = `${paths.data}.init`;
  await rm(scratch, { recursive: true, force: true });
  const args = ['-D', scratch, '-U', adminRole, '-E', 'UTF8', '--locale=C.UTF-8', '--auth-local=trust', '--auth-host=scram-sha-256'];
  try {
    await execFileAsync(join(install.binDir, 'initdb'), args, { ...processOptions(install, runAs), cwd: '/' });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim().split('\n').slice(-3).join(' ');
    throw new Error(`initdb failed: ${stderr || (error as Error).message}`);
  }
  await writeOwnedFile(join(scratch, 'pg_hba.conf'), [
    '# written by the dbplane agent',
    `local all ${adminRole} trust`,
    'host all all 127.0.0.1/32 scram-sha-256',
    'host all all ::1/128 scram-sha-256',
    '',
  ].join('\n'), runAs);
  await appendFile(join(scratch, 'postgresql.conf'), "\ninclude 'dbplane.conf'\n");
  await rename(scratch, paths.data);
}

/** Settings the agent owns: a request may not move the server off its port, socket or logs. */
const managedSettings = new Set([
  'listen_addresses', 'port', 'unix_socket_directories', 'unix_socket_group', 'unix_socket_permissions',
  'password_encryption', 'logging_collector', 'log_directory', 'data_directory', 'hba_file', 'ident_file',
  'config_file', 'external_pid_file', 'include', 'include_dir', 'include_if_exists',
  // WAL archiving belongs to the agent (backups/service.ts).
  'archive_mode', 'archive_command', 'archive_library', 'restore_command',
]);

/** Problems with requested settings, keyed by setting name; empty when all can be written safely. */
export function settingsProblems(settings: PostgresSettings): Record<string, string> {
  const problems: Record<string, string> = {};
  for (const [name, value] of Object.entries(settings)) {
    if (!/^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$/.test(name)) problems[name] = 'not a valid setting name';
    else if (managedSettings.has(name)) problems[name] = 'this setting is managed by the agent';
    else if (/[\0\r\n]/.test(value)) problems[name] = 'a value cannot contain line breaks';
  }
  return problems;
}

export function quoteSetting(value: string): string {
  return `'${value.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`;
}

/** Rewritten before every start, so the file always matches the instance's current spec. */
export async function writeServerConfig(
  paths: ServerPaths, port: number, settings: PostgresSettings, runAs: RunAs | undefined, extraLines: string[] = [],
): Promise<void> {
  const lines = [
    '# written by the dbplane agent before every start; edits here are lost',
    ...Object.entries(settings).map(([name, value]) => `${name} = ${quoteSetting(value)}`),
    // After the requested settings, so these win even if one slipped through.
    `listen_addresses = '127.0.0.1'`,
    `port = ${port}`,
    `unix_socket_directories = ${quoteSetting(paths.socket)}`,
    `password_encryption = 'scram-sha-256'`,
    // Before a recovery (a restore's, a crash's), PostgreSQL makes the data directory durable: one syncfs() of its
    // file system (PostgreSQL ≥ 14, Linux) rather than an fsync per file: 0.2–0.3 s instead of 0.3–1 s here for 300 MB.
    `recovery_init_sync_method = 'syncfs'`,
    'logging_collector = on',
    `log_directory = ${quoteSetting(paths.log)}`,
    // Last, so they win: archiving, or a restore's recovery settings.
    ...extraLines,
    '',
  ];
  await writeOwnedFile(join(paths.data, 'dbplane.conf'), lines.join('\n'), runAs);
}

/**
 * The postmaster runs as the agent's direct child (no pg_ctl), so the agent sees it exit and reaps it.
 * Stderr is piped: it carries the reason when the server fails before its log collector starts.
 */
export function spawnPostmaster(install: PostgresInstall, paths: ServerPaths, runAs: RunAs | undefined): ChildProcess {
  return spawn(join(install.binDir, 'postgres'), ['-D', paths.data], {
    ...processOptions(install, runAs),
    cwd: paths.data,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
}

/**
 * A postmaster left running by an agent that was killed still holds the data directory. Stop it
 * (fast shutdown) before starting anew, but only if postmaster.pid names a live postgres process
 * serving this very data directory: a reused pid is someone else's process.
 */
export async function stopStalePostmaster(dataDir: string): Promise<void> {
  const lockFile = join(dataDir, 'postmaster.pid');
  const pid = Number((await readFile(lockFile, 'utf8').catch(() => '')).split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) return;
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  if (argv[0]?.endsWith('/postgres') && argv.includes(dataDir)) {
    process.kill(pid, 'SIGINT');
    const deadline = Date.now() + 30_000;
    while (await isAlive(pid)) {
      if (Date.now() > deadline) process.kill(pid, 'SIGKILL');
      await sleep(100);
    }
  }
  // What is left is the lock of a dead postmaster. PostgreSQL itself would still refuse it while that pid
  // answers kill(0): a zombie nobody reaps (its agent was killed with it) or a reused pid.
  if (!(await isAlive(pid)) || !argv.includes(dataDir)) await rm(lockFile, { force: true });
}

/** A zombie (exited, not yet reaped by its new parent) counts as gone. */
async function isAlive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return stat !== undefined && stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
}
