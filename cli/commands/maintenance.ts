import type { Command } from 'commander';
import { Maintenance, MaintenanceList, WindowView } from '../../functions/api/schemas.ts';
import { CliError } from '../client.ts';
import { contextOf } from '../context.ts';
import { fields, json, table } from '../output.ts';

export function registerMaintenance(program: Command): void {
  const maintenance = program.command('maintenance').alias('mt').description('maintenance windows and the maintenance that runs in them');

  maintenance.command('window')
    .description("show the database's weekly maintenance window (UTC), or set it with --day and --hour")
    .argument('<database>', 'name or id')
    .option('--day <weekday>', 'the weekday it starts on: sunday … saturday')
    .option('--hour <0-23>', 'the UTC hour it starts at')
    .option('--duration <hours>', 'how long it lasts, 1-24 hours (default 8)')
    .action(async (ref: string, options: { day?: string; hour?: string; duration?: string }, command: Command) => {
      const ctx = await contextOf(command);
      if ((options.day === undefined) !== (options.hour === undefined)) throw new CliError('give both --day and --hour to set the window');
      if (options.duration !== undefined && options.day === undefined) throw new CliError('--duration needs --day and --hour');
      // The ranges are the API's to check: its 400 names the field.
      const view = options.day === undefined
        ? await ctx.client.get(`${databasePath(ref)}/maintenance-window`, WindowView)
        : await ctx.client.put(`${databasePath(ref)}/maintenance-window`, {
          day: options.day, hour: Number(options.hour), ...(options.duration === undefined ? {} : { durationHours: Number(options.duration) }),
        }, WindowView);
      if (ctx.json) return ctx.out(json(view));
      ctx.out(fields([
        ['window', `${view.window.day} ${String(view.window.hour).padStart(2, '0')}:00 UTC, ${view.window.durationHours} h`],
        ['open now', view.open ? 'yes' : 'no'],
        [view.open ? 'current' : 'next', `${view.nextStart} → ${view.nextEnd}`],
      ]));
    });

  maintenance.command('list')
    .description('upcoming (soonest first) and past (newest first) maintenance of a database')
    .argument('<database>', 'name or id')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const list = await ctx.client.get(`${databasePath(ref)}/maintenance`, MaintenanceList);
      if (ctx.json) return ctx.out(json(list));
      ctx.out(table(['ID', 'KIND', 'TO', 'STATUS', 'WINDOW', 'OPERATION', 'REASON'],
        [...list.upcoming, ...list.past].map((m) => [m.id, m.kind, m.target.version ?? m.target.plan ?? (m.kind === 'restart' ? 'settings of record' : 'queued change'), m.status, m.windowStart, m.operationId, m.reason])));
    });

  maintenance.command('show')
    .description('one maintenance with its history')
    .argument('<database>', 'name or id')
    .argument('<maintenanceId>', 'see dbplane maintenance list')
    .action(async (ref: string, id: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const item = await ctx.client.get(maintenancePath(ref, id), Maintenance);
      ctx.out(ctx.json ? json(item) : maintenanceFields(item));
    });

  for (const [name, description] of [
    ['postpone', 'move a waiting maintenance to the following window (within its limits)'],
    ['apply-now', 'start a waiting maintenance now, outside the window'],
  ] as const) {
    maintenance.command(name)
      .description(description)
      .argument('<database>', 'name or id')
      .argument('<maintenanceId>', 'see dbplane maintenance list')
      .action(async (ref: string, id: string, _options: unknown, command: Command) => {
        const ctx = await contextOf(command);
        const item = await ctx.client.post(`${maintenancePath(ref, id)}/${name}`, undefined, Maintenance);
        ctx.out(ctx.json ? json(item) : maintenanceFields(item));
      });
  }
}

function databasePath(ref: string): string {
  return `/databases/${encodeURIComponent(ref)}`;
}

function maintenancePath(ref: string, id: string): string {
  return `${databasePath(ref)}/maintenance/${encodeURIComponent(id)}`;
}

function maintenanceFields(m: Maintenance): string {
  const summary = fields([
    ['id', m.id],
    ['kind', m.kind],
    ['to', m.target.version ?? m.target.plan ?? (m.kind === 'restart' ? 'the settings of record' : "the database's queued change")],
    ['source', m.source],
    ['status', m.reason ? `${m.status} (${m.reason})` : m.status],
    ['window', `${m.windowStart} → ${m.windowEnd}`],
    ['notified', m.notifiedAt],
    ['postponed', `${m.postponements} of at most ${m.maxPostponements}${m.deadline ? `, not past ${m.deadline}` : ''}`],
    ['operation', m.operationId],
  ]);
  return `${summary}\n${table(['AT', 'FROM', 'TO', 'REASON'], m.history.map((h) => [h.at, h.from, h.to, h.reason]))}`;
}
