import type { Command } from 'commander';
import type { z } from 'zod';
import { type CreateWebhookBody, Webhook, WebhookDeliveryList, WebhookList, WebhookWithSecret } from '../../functions/api/schemas.ts';
import { contextOf } from '../context.ts';
import { fields, json, table } from '../output.ts';

export function registerWebhooks(program: Command): void {
  const webhooks = program.command('webhooks').description("your account's webhooks: dbplane's events POSTed to your URL, signed");

  webhooks.command('create')
    .description('register a webhook; its signing secret is shown once')
    .argument('<url>', 'an https URL (resolving to public addresses only)')
    .option('--events <patterns>', 'comma-separated event types or prefixes (dbplane.maintenance.*); default: every event')
    .option('--description <text>', 'what it is for')
    .action(async (url: string, options: { events?: string; description?: string }, command: Command) => {
      const ctx = await contextOf(command);
      const body: z.input<typeof CreateWebhookBody> = {
        url,
        events: options.events?.split(',').map((e) => e.trim()).filter(Boolean),
        description: options.description,
      };
      const created = await ctx.client.post('/webhooks', body, WebhookWithSecret);
      if (ctx.json) return ctx.out(json(created));
      ctx.out(fields([
        ['id', created.id], ['url', created.url], ['events', created.events.join(',')], ['description', created.description], ['secret', created.secret],
      ]));
      ctx.note('the secret is shown only once: store it where your receiver verifies dbplane-signature');
    });

  webhooks.command('list')
    .description('your webhooks')
    .action(async (_options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const { webhooks: list } = await ctx.client.get('/webhooks', WebhookList);
      if (ctx.json) return ctx.out(json({ webhooks: list }));
      ctx.out(table(['ID', 'URL', 'EVENTS', 'CREATED', 'DESCRIPTION'], list.map((w) => [w.id, w.url, w.events.join(','), w.createdAt, w.description])));
    });

  webhooks.command('deliveries')
    .description("a webhook's recent deliveries, newest first, with their last attempt")
    .argument('<id>', 'webhook id')
    .action(async (id: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const { deliveries } = await ctx.client.get(`/webhooks/${encodeURIComponent(id)}/deliveries`, WebhookDeliveryList);
      if (ctx.json) return ctx.out(json({ deliveries }));
      ctx.out(table(['EVENT', 'TYPE', 'STATUS', 'ATTEMPTS', 'LAST CODE', 'NEXT ATTEMPT', 'ERROR'], deliveries.map((d) => {
        const last = d.attempts.at(-1);
        return [d.eventId, d.eventType, d.status, d.attempts.length, last?.statusCode, d.nextAttemptAt, last?.error];
      })));
    });

  webhooks.command('delete')
    .description('delete a webhook; nothing more is sent to it')
    .argument('<id>', 'webhook id')
    .action(async (id: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const deleted = await ctx.client.delete(`/webhooks/${encodeURIComponent(id)}`, Webhook);
      ctx.out(ctx.json ? json(deleted) : `deleted webhook ${deleted.id} (${deleted.url})\n`);
    });
}
