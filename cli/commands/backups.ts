import { createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { z } from 'zod';
import { DatabaseView } from '#core/model.ts';
import {
  BackupList, BackupScheduleBody, BackupStarted, BackupView, DownloadLink, Problem, RecoveryWindow, RestoreRequest, RestoreStarted,
} from '../../functions/api/schemas.ts';
import { CliError, parseJson } from '../client.ts';
import { updateConfig } from '../config.ts';
import { contextOf } from '../context.ts';
import { fields, json, table } from '../output.ts';
import { addWaitOptions, waitForOperation, type WaitOptions } from '../wait.ts';

type BackupView = z.infer<typeof BackupView>;

export function registerBackups(program: Command): void {
  const backups = program.command('backups').alias('bk').description('take, list, download and restore backups');

  backups.command('list')
    .description("a database's backups, newest first, with when retention removes each")
    .argument('<database>', 'name or id')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const { backups: list } = await ctx.client.get(`${databasePath(ref)}/backups`, BackupList);
      if (ctx.json) return ctx.out(json({ backups: list }));
      ctx.out(table(['ID', 'KIND', 'STATUS', 'SIZE', 'CONSISTENT AT', 'COPIES', 'EXPIRES'],
        list.map((b) => [b.id, b.kind, b.status, b.sizeBytes === undefined ? undefined : bytes(b.sizeBytes), b.consistentAt, copies(b), expires(b)])));
    });

  addWaitOptions(backups.command('create')
    .description('take a manual backup now (the database keeps serving)')
    .argument('<database>', 'name or id'))
    .action(async (ref: string, options: WaitOptions, command: Command) => {
      const ctx = await contextOf(command);
      const started = await ctx.client.post(`${databasePath(ref)}/backups`, undefined, BackupStarted);
      if (ctx.json) ctx.out(json(started));
      else ctx.out(`backing up ${ref}: backup ${started.backup.id}, ${started.operation.kind} operation ${started.operation.id}\n`);
      if (!options.wait) return;
      await waitForOperation(ctx, started.operation, options.timeout);
      // Under --json stdout already holds one document; the finished backup is one `backups show` away.
      if (!ctx.json) ctx.out(backupFields(await ctx.client.get(backupPath(ref, started.backup.id), BackupView)));
    });

  backups.command('show')
    .description('one backup, with its copies')
    .argument('<database>', 'name or id')
    .argument('<backupId>', 'backup id (see dbplane backups list)')
    .action(async (ref: string, backupId: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const backup = await ctx.client.get(backupPath(ref, backupId), BackupView);
      ctx.out(ctx.json ? json(backup) : backupFields(backup));
    });

  backups.command('download')
    .description('save a backup: its pg_dump (restore with pg_restore) where it has one, else a tar of the data directory')
    .argument('<database>', 'name or id')
    .argument('<backupId>', 'backup id (see dbplane backups list)')
    .addOption(new Option('--format <format>', 'dump or base (default: dump where the backup has one)').choices(['dump', 'base']))
    .addOption(new Option('--output <file>', 'where to write it (default: <database>-<backupId>.dump or .tar)').conflicts('urlOnly'))
    .option('--url-only', 'print the signed, time-limited URL (the link JSON under --json) instead of downloading')
    .action(async (ref: string, backupId: string, options: { format?: string; output?: string; urlOnly?: boolean }, command: Command) => {
      const ctx = await contextOf(command);
      const query = options.format ? `?format=${options.format}` : '';
      const link = await ctx.client.get(`${backupPath(ref, backupId)}/download${query}`, DownloadLink);
      if (options.urlOnly) return ctx.out(ctx.json ? json(link) : `${link.url}\n`);
      const path = options.output ?? `${ref}-${backupId}.${link.format === 'pg_dump' ? 'dump' : 'tar'}`;
      const { sizeBytes, contentEncoding } = await downloadTo(link.url, path);
      if (ctx.json) return ctx.out(json({ path, sizeBytes, format: link.format, ...(contentEncoding ? { contentEncoding } : {}) }));
      ctx.out(`wrote ${path} (${bytes(sizeBytes)}${contentEncoding ? `, received ${contentEncoding}-compressed` : ''})\n`);
    });

  addWaitOptions(backups.command('restore')
    .description('restore to a backup or an instant: in place (an undo backup is taken first) or into a new database')
    .argument('<database>', 'the source: name or id')
    .addOption(new Option('--backup <id>', 'the completed backup to restore').conflicts('time'))
    .addOption(new Option('--time <instant>', 'an ISO 8601 instant inside the recovery window, e.g. 2025-01-31T12:00:00Z').argParser(parseInstant))
    .option('--into-new <name>', 'restore into a new database with this name, leaving the source untouched'))
    .action(async (ref: string, options: { backup?: string; time?: string; intoNew?: string } & WaitOptions, command: Command) => {
      if (!options.backup && !options.time) command.error("error: give either '--backup <id>' or '--time <instant>'", { exitCode: 2 });
      const ctx = await contextOf(command);
      const body: z.input<typeof RestoreRequest> = {
        ...(options.backup ? { backupId: options.backup } : { pointInTime: options.time }),
        ...(options.intoNew ? { into: 'new', name: options.intoNew } : { into: 'same' }),
      };
      const restored = await ctx.client.post(`${databasePath(ref)}/restore`, body, RestoreStarted);
      const { database, operation, password } = restored;
      if (password) {
        // As `databases create` does, and before anything else can fail: the API never shows it again.
        await updateConfig(ctx.configPath, (config) => {
          config.credentials[ctx.apiUrl] = { ...config.credentials[ctx.apiUrl], [database.id]: { database: database.name, password } };
        });
      }
      const target = options.backup ? `backup ${options.backup}` : `${options.time}`;
      ctx.out(ctx.json ? json(restored) : fields([
        ['restoring', options.intoNew ? `${ref} at ${target} into new database ${database.name} (${database.id})` : `${database.name} (${database.id}) in place to ${target}`],
        ['operation', `${operation.kind} ${operation.id}`],
        ['password', password && `${password}  (shown once; saved in ${ctx.configPath})`],
      ]));
      if (!options.wait) {
        ctx.note(`follow it with: dbplane operations show ${operation.id} --wait`);
        return;
      }
      await waitForOperation(ctx, operation, options.timeout);
      if (password) ctx.progress(`connect with: dbplane databases url ${database.name}`);
    });

  backups.command('schedule')
    .description("set the daily backup's UTC hour and, within the plan's limits, how long backups are kept")
    .argument('<database>', 'name or id')
    .requiredOption('--hour <0-23>', 'UTC hour of the daily backup', parseInteger)
    .option('--daily-retention <days>', 'keep each daily backup this many days', parseInteger)
    .option('--pitr-days <days>', 'how many days back a point-in-time restore can reach', parseInteger)
    .action(async (ref: string, options: { hour: number; dailyRetention?: number; pitrDays?: number }, command: Command) => {
      const ctx = await contextOf(command);
      const retention = {
        ...(options.dailyRetention === undefined ? {} : { dailyRetention: options.dailyRetention }),
        ...(options.pitrDays === undefined ? {} : { pointInTimeDays: options.pitrDays }),
      };
      // The range is the API's to check: its 400 names the field.
      const body: z.input<typeof BackupScheduleBody> = { hour: options.hour, ...(Object.keys(retention).length ? { retention } : {}) };
      const db = await ctx.client.put(`${databasePath(ref)}/backup-schedule`, body, DatabaseView);
      if (ctx.json) return ctx.out(json(db));
      ctx.out(fields([
        ['database', `${db.name} (${db.id})`],
        ['daily backup', `${String(db.backupHour).padStart(2, '0')}:00 UTC`],
        ['daily retention', db.backupRetention?.dailyRetention === undefined ? 'the plan\'s' : `${db.backupRetention.dailyRetention} days`],
        ['point in time', db.backupRetention?.pointInTimeDays === undefined ? 'the plan\'s' : `${db.backupRetention.pointInTimeDays} days`],
      ]));
    });

  backups.command('window')
    .description('the earliest and latest instants a point-in-time restore can reach')
    .argument('<database>', 'name or id')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const window = await ctx.client.get(`${databasePath(ref)}/backups/recovery-window`, RecoveryWindow);
      if (ctx.json) return ctx.out(json(window));
      ctx.out(fields([
        ['earliest', window.earliest ?? 'none yet: no backup has completed'],
        ['latest', window.latest ?? '-'],
      ]));
    });
}

/** The backup routes take a database's name or id. */
function databasePath(ref: string): string {
  return `/databases/${encodeURIComponent(ref)}`;
}

function backupPath(ref: string, backupId: string): string {
  return `${databasePath(ref)}/backups/${encodeURIComponent(backupId)}`;
}

function backupFields(b: BackupView): string {
  return fields([
    ['id', b.id],
    ['database', b.databaseId],
    ['kind', b.kind],
    ['status', b.reason ? `${b.status} (${b.reason})` : b.status],
    ['version', b.version],
    ['started', b.startedAt],
    ['finished', b.finishedAt],
    ['consistent at', b.consistentAt],
    ['size', b.sizeBytes === undefined ? undefined : `${bytes(b.sizeBytes)} (${b.sizeBytes} bytes)`],
    ['sha256', b.sha256],
    ['copies', b.copies.length ? `${copies(b)}: ${b.copies.map((c) => `${c.zone} ${c.ok ? 'ok' : 'FAILED'}`).join(', ')}` : undefined],
    ['expires', expires(b)],
    ['operation', b.operationId],
  ]);
}

function copies(b: BackupView): string | undefined {
  if (b.copies.length === 0) return undefined;
  return `${b.copies.filter((c) => c.ok).length}/${b.copies.length} ok`;
}

/** No expiry on a completed backup means retention keeps it (the newest one, for instance). */
function expires(b: BackupView): string | undefined {
  return b.expiresAt ?? (b.status === 'completed' ? 'kept' : undefined);
}

/** 1024-based, one decimal below 10 units: `512 B`, `8.5 KiB`, `23 MiB`. */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 || value >= 10 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

function parseInteger(value: string): number {
  if (!/^-?\d+$/.test(value.trim())) throw new InvalidArgumentError('expected a whole number');
  return Number(value);
}

function parseInstant(value: string): string {
  if (Number.isNaN(Date.parse(value))) throw new InvalidArgumentError('expected an ISO 8601 instant such as 2025-01-31T12:00:00Z');
  return value;
}

/**
 * Streams the signed URL to `path` through a temporary file, so an interrupted download never leaves
 * something that looks complete. The URL carries its own signature: no API token is sent with it.
 * Returns the size written and the coding the bytes travelled in (decoded on the way), if any.
 */
async function downloadTo(url: string, path: string): Promise<{ sizeBytes: number; contentEncoding?: string }> {
  let response: Response;
  try {
    // zstd as well as fetch's own gzip and deflate: a dump stored zstd-compressed then comes as stored (about half the
    // bytes), and fetch decompresses it as it arrives.
    response = await fetch(url, { headers: { 'accept-encoding': 'zstd, gzip, deflate' } });
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
    throw new CliError(`cannot download the backup: ${cause}`);
  }
  if (!response.ok || !response.body) {
    const text = await response.text().catch(() => '');
    const problem = Problem.safeParse(parseJson(text));
    const reason = problem.success ? (problem.data.detail ?? problem.data.title) : text.slice(0, 200) || response.statusText;
    throw new CliError(`cannot download the backup: ${reason} (HTTP ${response.status})`);
  }
  const partial = `${path}.part`;
  try {
    await pipeline(Readable.fromWeb(response.body as WebReadableStream<Uint8Array>), createWriteStream(partial, { mode: 0o600 }));
    await rename(partial, path);
  } catch (err) {
    await rm(partial, { force: true });
    throw new CliError(`cannot write ${path}: ${err instanceof Error ? err.message : String(err)}`);
  }
  return { sizeBytes: (await stat(path)).size, contentEncoding: response.headers.get('content-encoding') ?? undefined };
}
