import { type Command, InvalidArgumentError, Option } from 'commander';
import type { z } from 'zod';
import { Scope } from '#core/model.ts';
import { Account, CreateTokenBody, TokenCreated } from '../../functions/api/schemas.ts';
import { contextOf } from '../context.ts';
import { fields, json } from '../output.ts';

export function registerAdmin(program: Command): void {
  const admin = program.command('admin').description('operator commands (need a token with the admin scope)');

  admin.command('accounts').description('customer accounts')
    .command('create')
    .description('create an account')
    .argument('<name>', 'display name')
    .action(async (name: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const account = await ctx.client.post('/admin/accounts', { name }, Account);
      ctx.out(ctx.json ? json(account) : fields([['id', account.id], ['name', account.name], ['created', account.createdAt]]));
    });

  admin.command('tokens').description('API tokens')
    .command('create')
    .description('create an API token for an account; the token is shown once')
    .argument('<accountId>', 'account id')
    .option('--name <name>', 'what the token is for', 'cli')
    .addOption(new Option('--scopes <scopes>', `comma-separated: ${Scope.options.join(', ')}`).argParser(parseScopes).default(['databases'], 'databases'))
    .action(async (accountId: string, options: z.input<typeof CreateTokenBody>, command: Command) => {
      const ctx = await contextOf(command);
      const body: z.input<typeof CreateTokenBody> = { name: options.name, scopes: options.scopes };
      const created = await ctx.client.post(`/admin/accounts/${encodeURIComponent(accountId)}/tokens`, body, TokenCreated);
      if (ctx.json) return ctx.out(json(created));
      ctx.out(fields([['id', created.id], ['account', created.accountId], ['name', created.name], ['scopes', created.scopes.join(',')], ['token', created.token]]));
      ctx.note('the token is shown only once: store it now (dbplane login --token ...)');
    });
}

function parseScopes(value: string): Scope[] {
  const scopes = value.split(',').map((s) => s.trim()).filter(Boolean);
  const parsed = Scope.array().min(1).safeParse(scopes);
  if (!parsed.success) throw new InvalidArgumentError(`expected a comma-separated list of ${Scope.options.join(', ')}`);
  return parsed.data;
}
