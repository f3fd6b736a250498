import type { Command } from 'commander';
import { Client } from './client.ts';
import { configPath, readConfig, resolveSettings } from './config.ts';

export interface GlobalOptions {
  apiUrl?: string;
  token?: string;
  json?: boolean;
}

/** What every command needs: an API client set up from flags, environment and config file, and where output goes. */
export interface Context {
  client: Client;
  apiUrl: string;
  token?: string;
  configPath: string;
  json: boolean;
  out(text: string): void;
  /** Progress and notes: on stderr under `--json`, so stdout stays one JSON document. */
  progress(line: string): void;
  note(line: string): void;
}

export async function contextOf(command: Command): Promise<Context> {
  const options = command.optsWithGlobals<GlobalOptions>();
  const path = configPath();
  const settings = resolveSettings(options, process.env, await readConfig(path));
  const json = options.json ?? false;
  return {
    client: new Client(settings),
    apiUrl: settings.apiUrl,
    token: settings.token,
    configPath: path,
    json,
    out: (text) => process.stdout.write(text),
    progress: (line) => (json ? process.stderr : process.stdout).write(`${line}\n`),
    note: (line) => process.stderr.write(`${line}\n`),
  };
}
