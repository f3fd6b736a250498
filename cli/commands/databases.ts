import { type Command, Option } from 'commander';
import type { z } from 'zod';
import { type EngineName, engineNames } from '#core/catalog.ts';
import { DatabaseView } from '#core/model.ts';
import {
  AuditEventList, type ChangePlanBody, CreateDatabaseBody, DatabaseCreated, DatabaseDeleted, DatabaseList, PlanChangePreview, PlanChangeStarted,
  type TagsBody, type UpgradeBody, UpgradeList, UpgradeReport, UpgradeStarted,
} from '../../functions/api/schemas.ts';
import { CliError } from '../client.ts';
import { readConfig, updateConfig } from '../config.ts';
import { type Context, contextOf } from '../context.ts';
import { fields, json, table } from '../output.ts';
import { addWaitOptions, waitForOperation, type WaitOptions } from '../wait.ts';

export function registerDatabases(program: Command): void {
  const databases = program.command('databases').alias('db').description('create, inspect and delete databases');

  addWaitOptions(databases.command('create')
    .description('create a database; prints its password once and remembers its connection URL')
    .argument('<name>', 'lowercase letters, digits and dashes')
    .addOption(new Option('--engine <engine>', 'the database engine').choices(engineNames).makeOptionMandatory())
    .option('--version <version>', 'a major ("17") or major.minor ("17.10"); default: the newest default major')
    .requiredOption('--plan <plan>', 'a plan id (see dbplane plans)')
    .option('--tag <tags...>', 'tags: key=value or labels, e.g. env=staging'))
    .action(async (name: string, options: { engine: EngineName; version?: string; plan: string; tag?: string[] } & WaitOptions, command: Command) => {
      const ctx = await contextOf(command);
      const body: z.input<typeof CreateDatabaseBody> = { name, engine: options.engine, version: options.version, plan: options.plan, tags: options.tag };
      const created = await ctx.client.post('/databases', body, DatabaseCreated);
      // Saved before anything else can fail: the API will never show this password again.
      await updateConfig(ctx.configPath, (config) => {
        config.credentials[ctx.apiUrl] = { ...config.credentials[ctx.apiUrl], [created.database.id]: { database: created.database.name, password: created.password } };
      });
      ctx.out(ctx.json
        ? json(created)
        : databaseFields(created.database, [['password', `${created.password}  (shown once; saved in ${ctx.configPath})`]]));
      if (!options.wait) {
        ctx.note(`once it is running: dbplane databases url ${created.database.name}`);
        return;
      }
      await waitForOperation(ctx, created.operation, options.timeout);
      const db = await findDatabase(ctx, created.database.id);
      if (db.url) ctx.progress(`url: ${withPassword(db.url, created.password)}`);
    });

  databases.command('list')
    .description('your databases')
    .action(async (_options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const { databases: list } = await ctx.client.get('/databases', DatabaseList);
      if (ctx.json) return ctx.out(json({ databases: list }));
      ctx.out(table(['NAME', 'ID', 'ENGINE', 'VERSION', 'PLAN', 'STATUS', 'CREATED'],
        list.map((db) => [db.name, db.id, db.engine, db.version, db.plan, db.status, db.createdAt])));
    });

  databases.command('show')
    .description('one database')
    .argument('<database>', 'name or id')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      ctx.out(ctx.json ? json(db) : databaseFields(db));
    });

  addWaitOptions(databases.command('delete')
    .description('delete a database and its data')
    .argument('<database>', 'name or id'))
    .action(async (ref: string, options: WaitOptions, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      const deleted = await ctx.client.delete(`/databases/${encodeURIComponent(db.id)}`, DatabaseDeleted);
      if (ctx.json) ctx.out(json(deleted));
      else ctx.out(`deleting ${db.name} (${db.id}): ${deleted.operation.kind} operation ${deleted.operation.id}\n`);
      if (!options.wait) return;
      await waitForOperation(ctx, deleted.operation, options.timeout);
      // Only once the server is gone: if the deletion fails, the password is still needed.
      await updateConfig(ctx.configPath, (config) => {
        delete config.credentials[ctx.apiUrl]?.[db.id];
      });
    });

  addWaitOptions(databases.command('plan')
    .description("change a database's plan now, or queue the change for its maintenance window")
    .argument('<database>', 'name or id')
    .argument('<plan>', 'the target plan id (see dbplane plans)')
    .addOption(new Option('--when <when>', 'now, or at the next maintenance window').choices(['now', 'maintenance_window']).default('now')))
    .action(async (ref: string, plan: string, options: { when: 'now' | 'maintenance_window' } & WaitOptions, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      const body: z.input<typeof ChangePlanBody> = { plan, when: options.when };
      const started = await ctx.client.post(`/databases/${encodeURIComponent(db.id)}/plan`, body, PlanChangeStarted);
      if (ctx.json) ctx.out(json(started));
      if (!started.operation) {
        if (!ctx.json) ctx.out(`${db.name}: change to ${plan} queued for the next maintenance window\n`);
        return;
      }
      if (!ctx.json) ctx.out(`changing ${db.name} from ${db.plan} to ${plan}: ${started.operation.kind} operation ${started.operation.id}\n`);
      if (options.wait) await waitForOperation(ctx, started.operation, options.timeout);
    });

  databases.command('tag')
    .description('add or change tags (key=value or labels): a key given again gets the new value; --remove drops keys or labels')
    .argument('<database>', 'name or id')
    .argument('[tags...]', 'e.g. env=staging team=shop pci')
    .option('--remove <keys...>', 'keys or labels to drop')
    .action(async (ref: string, tags: string[], options: { remove?: string[] }, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      const keyOf = (tag: string) => tag.split('=')[0];
      const replaced = new Set([...tags.map(keyOf), ...(options.remove ?? [])]);
      const body: z.input<typeof TagsBody> = { tags: [...(db.tags ?? []).filter((t) => !replaced.has(keyOf(t))), ...tags] };
      const tagged = await ctx.client.put(`/databases/${encodeURIComponent(db.id)}/tags`, body, DatabaseView);
      ctx.out(ctx.json ? json(tagged) : `${tagged.name}: ${tagged.tags?.join(' ') || 'no tags'}\n`);
    });

  databases.command('plan-preview')
    .description('what a plan change would do, and whether it may start now; changes nothing')
    .argument('<database>', 'name or id')
    .argument('<plan>', 'the target plan id')
    .action(async (ref: string, plan: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      const preview = await ctx.client.get(`/databases/${encodeURIComponent(db.id)}/plan-change/preview?plan=${encodeURIComponent(plan)}`, PlanChangePreview);
      if (ctx.json) return ctx.out(json(preview));
      ctx.out(fields([
        ['from', preview.from],
        ['to', preview.to],
        ['allowed', preview.allowed ? 'yes' : `no: ${preview.reasons.join('; ')}`],
        ['unavailable', `about ${preview.expectedUnavailabilitySeconds} s`],
      ]));
      ctx.out(preview.steps.map((step, i) => `  ${i + 1}. ${step}\n`).join(''));
    });

  databases.command('upgrades')
    .description('the versions a database can be upgraded to, with their end-of-life dates')
    .argument('<database>', 'name or id')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      const list = await ctx.client.get(`/databases/${encodeURIComponent(db.id)}/upgrades`, UpgradeList);
      if (ctx.json) return ctx.out(json(list));
      ctx.out(`${db.name} runs ${list.current}\n`);
      ctx.out(table(['VERSION', 'KIND', 'STRATEGY', 'END OF LIFE', 'AVAILABLE'],
        list.targets.map((t) => [t.version, t.kind, t.strategy, t.endOfLife, t.available ? 'yes' : `no: ${t.reason}`])));
    });

  addWaitOptions(databases.command('upgrade')
    .description("upgrade a database's engine now, or queue it for its maintenance window; --dry-run prints the pre-upgrade report")
    .argument('<database>', 'name or id')
    .argument('<version>', 'an exact version (16.14) or a major (16: its newest minor)')
    .option('--dry-run', 'check the live database and print what the upgrade would do; changes nothing')
    .addOption(new Option('--when <when>', 'now, or at the next maintenance window').choices(['now', 'maintenance_window']).default('now')))
    .action(async (ref: string, version: string, options: { dryRun?: boolean; when: 'now' | 'maintenance_window' } & WaitOptions, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      if (options.dryRun) {
        const report = await ctx.client.get(`/databases/${encodeURIComponent(db.id)}/upgrades/report?version=${encodeURIComponent(version)}`, UpgradeReport);
        if (ctx.json) return ctx.out(json(report));
        const issues = (list: typeof report.blocking) => list.map((c) => `${c.check}: ${c.detail}`).join('; ') || 'none';
        ctx.out(fields([
          ['from', report.from],
          ['to', `${report.version} (${report.kind}, ${report.strategy})`],
          ['allowed', report.allowed ? 'yes' : `no${report.reason ? `: ${report.reason}` : ''}`],
          ['blocking', issues(report.blocking)],
          ['warnings', issues(report.warnings)],
          ['unavailable', `about ${report.expectedUnavailabilitySeconds} s`],
        ]));
        return ctx.out(report.steps.map((step, i) => `  ${i + 1}. ${step}\n`).join(''));
      }
      const body: z.input<typeof UpgradeBody> = { version, when: options.when };
      const started = await ctx.client.post(`/databases/${encodeURIComponent(db.id)}/upgrade`, body, UpgradeStarted);
      if (ctx.json) ctx.out(json(started));
      if (!started.operation) {
        if (!ctx.json) ctx.out(`${db.name}: upgrade to ${version} queued for the next maintenance window\n`);
        return;
      }
      if (!ctx.json) ctx.out(`upgrading ${db.name} from ${db.version} to ${version}: ${started.operation.kind} operation ${started.operation.id}\n`);
      if (options.wait) await waitForOperation(ctx, started.operation, options.timeout);
    });

  databases.command('url')
    .description('the connection URL, with the password saved when this machine created the database')
    .argument('<database>', 'name or id')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      if (!db.url) throw new CliError(`${db.name} has no endpoint yet (status ${db.status})`);
      const saved = (await readConfig(ctx.configPath)).credentials[ctx.apiUrl]?.[db.id];
      if (saved) return ctx.out(`${withPassword(db.url, saved.password)}\n`);
      ctx.out(`${db.url}\n`);
      throw new CliError(`no password for ${db.name} in ${ctx.configPath}: it is shown only once, to whoever created the database`);
    });

  databases.command('events')
    .description("a database's audit trail, newest first")
    .argument('<database>', 'name or id')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      const { events } = await ctx.client.get(`/databases/${encodeURIComponent(db.id)}/events`, AuditEventList);
      if (ctx.json) return ctx.out(json({ events }));
      ctx.out(table(['AT', 'TYPE', 'OPERATION', 'DETAIL'],
        events.map((e) => [e.at, e.type, e.operationId, Object.keys(e.detail).length ? JSON.stringify(e.detail) : undefined])));
    });
}

/** By name or id, as `GET /databases/{id}` accepts either; other routes take the id it returns. */
export function findDatabase(ctx: Context, ref: string): Promise<DatabaseView> {
  return ctx.client.get(`/databases/${encodeURIComponent(ref)}`, DatabaseView);
}

function databaseFields(db: DatabaseView, extra: [string, string][] = []): string {
  return fields([
    ['name', db.name],
    ['id', db.id],
    ['engine', `${db.engine} ${db.version}`],
    ['plan', db.plan],
    ['tags', db.tags?.join(' ')],
    ['pending plan', db.pendingPlanChange && `${db.pendingPlanChange.plan} at the next maintenance window (asked ${db.pendingPlanChange.requestedAt})`],
    ['pending upgrade', db.pendingUpgrade && `${db.pendingUpgrade.version} at the next maintenance window (asked ${db.pendingUpgrade.requestedAt})`],
    ['status', db.statusReason ? `${db.status} (${db.statusReason})` : db.status],
    ['url', db.url],
    ['user', db.username],
    ['database', db.databaseName],
    ['operation', db.activeOperation],
    ['created', db.createdAt],
    ...extra,
  ]);
}

/** The API's URLs never carry the password; the URL setter percent-encodes it. */
function withPassword(url: string, password: string): string {
  const parsed = new URL(url);
  parsed.password = password;
  return parsed.toString();
}
