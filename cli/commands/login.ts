import type { Command } from 'commander';
import { DatabaseList } from '../../functions/api/schemas.ts';
import { CliError } from '../client.ts';
import { updateConfig } from '../config.ts';
import { contextOf } from '../context.ts';

export function registerLogin(program: Command): void {
  program.command('login')
    .description('check a token against the API and remember both (use the global --api-url and --token)')
    .action(async (_options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const token = ctx.token;
      if (!token) throw new CliError('no token: pass --token or set DBPLANE_TOKEN');
      // Any account route proves the token; listing databases is cheap and needs no extra scope.
      const { databases } = await ctx.client.get('/databases', DatabaseList);
      await updateConfig(ctx.configPath, (config) => {
        config.apiUrl = ctx.apiUrl;
        config.token = token;
      });
      ctx.note(`logged in to ${ctx.apiUrl} (${databases.length} database${databases.length === 1 ? '' : 's'}); saved in ${ctx.configPath}`);
    });
}
