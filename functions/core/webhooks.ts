import { createHmac, randomBytes } from 'node:crypto';
import { z } from 'zod';
import { detailTypes } from '../events/rules.ts';
import { BadRequest, NotFound, Unprocessable } from './errors.ts';
import { newId } from './ids.ts';
import { logger } from './logger.ts';
import type { Caller } from './model.ts';
import { type OutboundPolicy, postToTarget, resolveOutboundUrl, UrlNotAllowed } from './outbound-url.ts';
import type { WebhookStore } from './webhooks-store.ts';

/**
 * Account webhooks: dbplane's events, POSTed as JSON to the customer's URL, signed with a secret only
 * the customer and dbplane know (shown once, at creation or rotation), retried with exponential backoff
 * on network errors, timeouts, 429 and 5xx. Every URL goes through the outbound guard (outbound-url.ts)
 * when registered and again at every attempt.
 */

export const maxWebhooksPerAccount = 10;
/** Attempts per delivery, the first included. */
export const maxAttempts = 5;
/** Before attempt n+1: base × 2^(n-1), i.e. 30 s, 1, 2, 4 min (the retry schedule ticks every minute). */
export const retryBaseDelayMs = 30_000;
export const attemptTimeoutMs = 5_000;
/** How long an attempt may hold a delivery before the retry schedule may take it over (the caller died). */
const leaseMs = 60_000;
const deliveryListLimit = 50;
const retryBatch = 40;
const retryConcurrency = 10;

const knownTypes: readonly string[] = Object.values(detailTypes);

/** `dbplane.maintenance.*` matches every type under `dbplane.maintenance.`; anything else matches itself only. */
export function patternMatches(pattern: string, type: string): boolean {
  return pattern.endsWith('.*') ? type.startsWith(pattern.slice(0, -1)) : pattern === type;
}

export const EventPattern = z.string()
  .regex(/^dbplane(\.[a-z0-9-]+)*(\.\*)?$/, 'an event type (dbplane.database.upgraded) or a prefix ending in .* (dbplane.maintenance.*)')
  .refine((pattern) => knownTypes.some((type) => patternMatches(pattern, type)), `matches no event type; known: ${knownTypes.join(', ')}`);

export const CreateWebhookBody = z.object({
  url: z.string().min(1).max(2048).describe('where events are POSTed: https, resolving to public addresses only'),
  events: z.array(EventPattern).min(1).max(20).optional().describe('event types or prefixes (dbplane.maintenance.*); default: every event'),
  description: z.string().max(200).optional(),
}).strict();
export type CreateWebhookBody = z.infer<typeof CreateWebhookBody>;

export const Webhook = z.object({
  id: z.string(),
  accountId: z.string(),
  url: z.string(),
  events: z.array(z.string()),
  description: z.string().optional(),
  createdAt: z.string(),
  secretRotatedAt: z.string().optional(),
});
export type Webhook = z.infer<typeof Webhook>;

/** As stored: with the secret that signs deliveries, which the API never shows again. */
export const WebhookRecord = Webhook.extend({ signingSecret: z.string() });
export type WebhookRecord = z.infer<typeof WebhookRecord>;

export const WebhookWithSecret = Webhook.extend({
  secret: z.string().describe('shown once: verify the dbplane-signature header with it'),
});

export const DeliveryAttempt = z.object({
  attempt: z.number().int(),
  at: z.string(),
  durationMs: z.number().int(),
  outcome: z.enum(['delivered', 'will_retry', 'failed']),
  statusCode: z.number().int().optional().describe("the receiver's HTTP status, when it answered"),
  error: z.string().optional(),
  nextAttemptAt: z.string().optional(),
});
export type DeliveryAttempt = z.infer<typeof DeliveryAttempt>;

export const WebhookDelivery = z.object({
  id: z.string(),
  webhookId: z.string(),
  eventId: z.string(),
  eventType: z.string(),
  status: z.enum(['pending', 'succeeded', 'failed']),
  attempts: z.array(DeliveryAttempt),
  nextAttemptAt: z.string().optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type WebhookDelivery = z.infer<typeof WebhookDelivery>;

/** As stored: with the owner and the exact body, so every attempt sends the same bytes. */
export const DeliveryRecord = WebhookDelivery.extend({ accountId: z.string(), payload: z.string() });
export type DeliveryRecord = z.infer<typeof DeliveryRecord>;

export interface WebhookDeps {
  webhooks: WebhookStore;
  /** Read per invocation, so an operator's change applies to the next delivery. */
  policy: OutboundPolicy;
}

const newSecret = () => `whsec_${randomBytes(32).toString('base64url')}`;

export function webhookView({ signingSecret: _secret, ...webhook }: WebhookRecord): Webhook {
  return webhook;
}

function deliveryView({ accountId: _account, payload: _payload, ...delivery }: DeliveryRecord): WebhookDelivery {
  return delivery;
}

/**
 * `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>`: the receiver recomputes
 * it, compares in constant time and rejects an old `t`, so a captured request cannot be replayed later.
 */
export function signature(secret: string, body: string, at: Date): string {
  const t = Math.floor(at.getTime() / 1000);
  return `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')}`;
}

async function checkUrl(deps: WebhookDeps, url: string): Promise<void> {
  try {
    await resolveOutboundUrl(url, deps.policy);
  } catch (error) {
    if (!(error instanceof UrlNotAllowed)) throw error;
    throw new BadRequest(`/body/url: ${error.message}`, { errors: [{ pointer: '/body/url', detail: error.message }] });
  }
}

export async function createWebhook(deps: WebhookDeps, caller: Caller, body: CreateWebhookBody): Promise<z.infer<typeof WebhookWithSecret>> {
  await checkUrl(deps, body.url);
  if ((await deps.webhooks.listWebhooks(caller.accountId)).length >= maxWebhooksPerAccount) {
    throw new Unprocessable(`an account has at most ${maxWebhooksPerAccount} webhooks; delete one first`);
  }
  const record: WebhookRecord = {
    id: newId('wh'),
    accountId: caller.accountId,
    url: body.url,
    events: body.events ?? ['dbplane.*'],
    description: body.description,
    createdAt: new Date().toISOString(),
    signingSecret: newSecret(),
  };
  await deps.webhooks.putWebhook(record);
  return { ...webhookView(record), secret: record.signingSecret };
}

/** A webhook of the caller's; another account's is a 404 like a missing one. */
export async function findWebhook(deps: WebhookDeps, caller: Caller, id: string): Promise<WebhookRecord> {
  const webhook = await deps.webhooks.getWebhook(caller.accountId, id);
  if (!webhook) throw new NotFound(`no webhook "${id}"`);
  return webhook;
}

export async function listWebhooks(deps: WebhookDeps, caller: Caller): Promise<Webhook[]> {
  return (await deps.webhooks.listWebhooks(caller.accountId)).map(webhookView);
}

export async function deleteWebhook(deps: WebhookDeps, caller: Caller, id: string): Promise<Webhook> {
  const deleted = await deps.webhooks.deleteWebhook(caller.accountId, id);
  if (!deleted) throw new NotFound(`no webhook "${id}"`);
  return webhookView(deleted);
}

/** A new secret, shown once; the old one stops signing at once (retries of earlier events use the new one). */
export async function rotateSecret(deps: WebhookDeps, caller: Caller, id: string): Promise<z.infer<typeof WebhookWithSecret>> {
  const secret = newSecret();
  const updated = await deps.webhooks.setSecret(caller.accountId, id, secret, new Date().toISOString());
  if (!updated) throw new NotFound(`no webhook "${id}"`);
  return { ...webhookView(updated), secret };
}

export async function listDeliveries(deps: WebhookDeps, caller: Caller, id: string): Promise<WebhookDelivery[]> {
  const webhook = await findWebhook(deps, caller, id);
  return (await deps.webhooks.listDeliveries(webhook.id, deliveryListLimit)).map(deliveryView);
}

/** An event as the bus hands it over; `accountId` comes from its detail. */
export interface BusEvent {
  id: string;
  type: string;
  time: string;
  accountId: string;
  detail: Record<string, unknown>;
}

/** The result of one attempt: what to record, and whether to try again. */
async function attempt(deps: WebhookDeps, webhook: WebhookRecord, delivery: DeliveryRecord, at: Date): Promise<DeliveryAttempt> {
  const number = delivery.attempts.length + 1;
  const started = performance.now();
  let outcome: Pick<DeliveryAttempt, 'statusCode' | 'error'> & { retry: boolean; delivered?: boolean };
  try {
    // Checked again at every attempt: the name may resolve elsewhere now (DNS rebinding), or the operator's policy changed.
    const target = await resolveOutboundUrl(webhook.url, deps.policy);
    const { statusCode } = await postToTarget(target, delivery.payload, {
      'user-agent': 'dbplane-webhooks/1',
      'dbplane-event-id': delivery.eventId,
      'dbplane-signature': signature(webhook.signingSecret, delivery.payload, at),
    }, attemptTimeoutMs);
    if (statusCode >= 200 && statusCode < 300) outcome = { statusCode, retry: false, delivered: true };
    else if (statusCode === 429 || statusCode >= 500) outcome = { statusCode, retry: true };
    else outcome = { statusCode, retry: false, error: statusCode < 400 ? 'redirects are not followed' : undefined };
  } catch (error) {
    if (error instanceof UrlNotAllowed) outcome = { retry: false, error: error.message };
    else if ((error as Error).name === 'TimeoutError') outcome = { retry: true, error: `no answer within ${attemptTimeoutMs / 1000} s` };
    else outcome = { retry: true, error: (error as NodeJS.ErrnoException).code ?? (error as Error).message };
  }
  const retry = outcome.retry && number < maxAttempts;
  return {
    attempt: number,
    at: at.toISOString(),
    durationMs: Math.round(performance.now() - started),
    outcome: outcome.delivered ? 'delivered' : retry ? 'will_retry' : 'failed',
    statusCode: outcome.statusCode,
    error: outcome.error,
    nextAttemptAt: retry ? new Date(at.getTime() + retryBaseDelayMs * 2 ** (number - 1)).toISOString() : undefined,
  };
}

async function attemptAndRecord(deps: WebhookDeps, webhook: WebhookRecord, delivery: DeliveryRecord, at: Date): Promise<DeliveryAttempt> {
  const result = await attempt(deps, webhook, delivery, at);
  const status = result.outcome === 'delivered' ? 'succeeded' : result.outcome === 'failed' ? 'failed' : 'pending';
  // Ids, outcome and code only: never the secret, the signature or the URL (which may carry a token of the customer's).
  const fields = {
    webhookId: webhook.id, deliveryId: delivery.id, eventType: delivery.eventType, attempt: result.attempt,
    outcome: result.outcome, statusCode: result.statusCode, error: result.error, durationMs: result.durationMs,
  };
  if (await deps.webhooks.recordAttempt(delivery, result, status)) logger.info('webhook delivery attempt', fields);
  else logger.warn('webhook delivery attempt raced another; the first one recorded stands', fields);
  return result;
}

/**
 * Sends an event to each of its account's webhooks that subscribe to it (one query on the account's key),
 * first attempts in parallel. A redelivered event finds its deliveries recorded and sends nothing twice.
 */
export async function deliverEvent(deps: WebhookDeps, event: BusEvent): Promise<{ deliveries: number; delivered: number }> {
  const webhooks = (await deps.webhooks.listWebhooks(event.accountId)).filter((w) => w.events.some((p) => patternMatches(p, event.type)));
  const payload = JSON.stringify({ id: event.id, type: event.type, time: event.time, detail: event.detail });
  // Sortable by the event's time, unique per event: the sort key of the delivery under each webhook.
  const id = `${newId('dlv', Date.parse(event.time)).slice(0, 14)}${event.id.replaceAll('-', '')}`;
  const results = await Promise.all(webhooks.map(async (webhook) => {
    const at = new Date();
    const delivery: DeliveryRecord = {
      id, webhookId: webhook.id, accountId: event.accountId, eventId: event.id, eventType: event.type,
      status: 'pending', attempts: [], createdAt: at.toISOString(), updatedAt: at.toISOString(), payload,
    };
    if (!(await deps.webhooks.createDelivery(delivery, new Date(at.getTime() + leaseMs).toISOString()))) return undefined;
    return attemptAndRecord(deps, webhook, delivery, at);
  }));
  const attempted = results.filter((r) => r !== undefined);
  return { deliveries: attempted.length, delivered: attempted.filter((r) => r.outcome === 'delivered').length };
}

/**
 * The retry schedule's work: the deliveries due by `at` (sparse index, oldest first, a bounded batch),
 * each claimed first so that overlapping ticks never attempt one twice.
 */
export async function retryDueDeliveries(deps: WebhookDeps, at: Date): Promise<{ due: number; attempted: number }> {
  const due = await deps.webhooks.dueDeliveries(at.toISOString(), retryBatch);
  let attempted = 0;
  for (let i = 0; i < due.length; i += retryConcurrency) {
    await Promise.all(due.slice(i, i + retryConcurrency).map(async ({ delivery, due: position }) => {
      if (!(await deps.webhooks.claimDelivery(delivery, position, new Date(at.getTime() + leaseMs).toISOString()))) return;
      const webhook = await deps.webhooks.getWebhook(delivery.accountId, delivery.webhookId);
      if (!webhook) return deps.webhooks.abandonDelivery(delivery, at.toISOString());
      attempted++;
      await attemptAndRecord(deps, webhook, delivery, at);
    }));
  }
  return { due: due.length, attempted };
}
