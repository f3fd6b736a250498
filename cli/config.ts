import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { CliError } from './client.ts';

/** What `dbplane login` and `dbplane databases create` remember between runs. */
export const ConfigFile = z.object({
  apiUrl: z.string().optional(),
  token: z.string().optional(),
  /**
   * Database passwords by API URL then database id: the API shows a password only once. The URL is
   * not kept, since a database has no endpoint until provisioning has placed it.
   */
  credentials: z.record(z.string(), z.record(z.string(), z.object({ database: z.string(), password: z.string() }))).default({}),
});
export type ConfigFile = z.infer<typeof ConfigFile>;

export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.DBPLANE_CONFIG || join(homedir(), '.config', 'dbplane', 'config.json');
}

export async function readConfig(path: string): Promise<ConfigFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return ConfigFile.parse({});
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new CliError(`${path} is not valid JSON`);
  }
  const parsed = ConfigFile.safeParse(json);
  if (!parsed.success) throw new CliError(`${path} is not a dbplane config file: ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}

/** Writes the whole file at once (temp file + rename) so a crash never leaves half a token or a lost password. */
export async function writeConfig(path: string, config: ConfigFile): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const temp = `${path}.${process.pid}.tmp`;
  await writeFile(temp, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  // `mode` is filtered through the umask; the file holds secrets, so set it exactly.
  await chmod(temp, 0o600);
  await rename(temp, path);
}

/** Read, change, write: the file is small and one CLI invocation at a time owns it. */
export async function updateConfig(path: string, change: (config: ConfigFile) => void): Promise<void> {
  const config = await readConfig(path);
  change(config);
  await writeConfig(path, config);
}

export interface Settings {
  apiUrl: string;
  token?: string;
}

/** Flags win over the environment, which wins over the config file. */
export function resolveSettings(flags: { apiUrl?: string; token?: string }, env: NodeJS.ProcessEnv, config: ConfigFile): Settings {
  const apiUrl = flags.apiUrl || env.DBPLANE_API_URL || config.apiUrl;
  if (!apiUrl) throw new CliError('no API URL: pass --api-url, set DBPLANE_API_URL or run dbplane login');
  return { apiUrl: normalizeApiUrl(apiUrl), token: flags.token || env.DBPLANE_TOKEN || config.token };
}

/** The key credentials are stored under, so `http://x/` and `http://x` are the same API. */
export function normalizeApiUrl(apiUrl: string): string {
  return apiUrl.replace(/\/+$/, '');
}
