import type { Command } from 'commander';
import { EngineList, PlanList } from '../../functions/api/schemas.ts';
import { contextOf } from '../context.ts';
import { json, table } from '../output.ts';

export function registerCatalog(program: Command): void {
  program.command('engines')
    .description('engines and the versions the hosts can run')
    .action(async (_options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const list = await ctx.client.get('/engines', EngineList);
      if (ctx.json) return ctx.out(json(list));
      ctx.out(table(['ENGINE', 'VERSION', 'DEFAULT', 'END OF LIFE', 'CAPABILITIES'],
        list.engines.flatMap((e) => e.versions.map((v) => [
          e.engine,
          v.version,
          v.version === e.defaultVersion ? 'yes' : '',
          v.endOfLifeReached ? `${v.endOfLife} (reached)` : v.endOfLife,
          Object.entries(v.capabilities).filter(([, on]) => on).map(([name]) => name).join(','),
        ]))));
    });

  program.command('plans')
    .description('plans and what each gives')
    .action(async (_options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const list = await ctx.client.get('/plans', PlanList);
      if (ctx.json) return ctx.out(json(list));
      ctx.out(table(['PLAN', 'TIER', 'NODES', 'MEMORY', 'CPU', 'DISK', 'CONNECTIONS', 'PITR'],
        list.plans.map((p) => [p.id, p.tier, p.nodes, `${p.memoryMb}MB`, p.cpuShare, `${p.diskGb}GB`, p.maxConnections, `${p.backupPolicy.pointInTimeDays}d`])));
    });
}
