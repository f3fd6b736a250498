import { createHmac, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { envNames } from '../functions/core/config.ts';
import { EventPublisher } from '../functions/core/events.ts';
import { logger } from '../functions/core/logger.ts';
import { maxAttempts } from '../functions/core/webhooks.ts';
import { type ApiClient, apiClient, newTenant } from './helpers/api.ts';
import { dbplane, succeeded } from './helpers/cli.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/**
 * Account webhooks end to end: the API, the bus, the delivery handler and the retry schedule against a
 * receiver on loopback, reachable only because this test sets the operator setting explicitly.
 */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let admin: ApiClient;
let events: EventPublisher;
const receivers: Server[] = [];

/** Loopback and plain HTTP, as an operator would allow them for a receiver on its own machine. */
const allowLoopback = () => { process.env[envNames.outboundAllow] = '127.0.0.1/32,http'; };
const strictPolicy = () => { delete process.env[envNames.outboundAllow]; };

interface Received { headers: IncomingHttpHeaders; body: string }

/** A receiver answering the given statuses in turn (the last one from then on). */
async function receiver(...statuses: number[]) {
  const received: Received[] = [];
  const server = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => (body += chunk)).on('end', () => {
      received.push({ headers: request.headers, body });
      response.writeHead(statuses[Math.min(received.length, statuses.length) - 1]).end();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  receivers.push(server);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/dbplane`, received };
}

/** What the README tells a receiver to do with the dbplane-signature header. */
function verify(secret: string, header: string, body: string): boolean {
  const { t, v1 } = Object.fromEntries(header.split(',').map((part) => part.split('=') as [string, string]));
  const expected = createHmac('sha256', secret).update(`${t}.${body}`).digest();
  const given = Buffer.from(v1 ?? '', 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

async function tenantWithWebhook(url: string, body: Record<string, unknown> = {}) {
  const tenant = await newTenant(admin, runtime.apiUrl, `t${Math.random().toString(36).slice(2, 8)}`);
  const created = await tenant.api.post('/webhooks', { url, ...body });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  return { ...tenant, webhook: created.body };
}

/** An event of the account's, put on the bus like the domain puts it, and every rule's handler run. */
async function publish(accountId: string): Promise<void> {
  await events.databaseStatusChanged({ id: 'db-0000000000webhooktest000000', accountId }, 'creating', 'running');
  await runtime.drainEvents();
}

async function deliveries(api: ApiClient, webhookId: string) {
  const response = await api.get(`/webhooks/${webhookId}/deliveries`);
  expect(response.status).toBe(200);
  return response.body.deliveries as any[];
}

/** Runs the retry schedule at each due time until the delivery has settled (bounded). */
async function retryUntilSettled(api: ApiClient, webhookId: string) {
  for (let tick = 0; tick < 10; tick++) {
    const [delivery] = await deliveries(api, webhookId);
    if (delivery.status !== 'pending') return delivery;
    await runtime.fireSchedule('WebhookRetries', new Date(delivery.nextAttemptAt));
  }
  throw new Error('the delivery did not settle in 10 retry ticks');
}

beforeAll(async () => {
  runtime = await startTestRuntime();
  admin = apiClient(runtime.apiUrl, runtime.adminToken);
  events = new EventPublisher();
  allowLoopback();
});

afterEach(allowLoopback);

afterAll(async () => {
  strictPolicy();
  for (const server of receivers) server.close();
  await runtime?.stop();
});

describe('registration', () => {
  it('shows the signing secret once, at creation, and never in a read', async () => {
    const { url } = await receiver(200);
    const { api, webhook } = await tenantWithWebhook(url, { events: ['dbplane.maintenance.*'], description: 'pager' });
    expect(webhook).toMatchObject({ id: expect.stringMatching(/^wh-/), url, events: ['dbplane.maintenance.*'], description: 'pager', secret: expect.stringMatching(/^whsec_/) });

    const one = await api.get(`/webhooks/${webhook.id}`);
    const all = await api.get('/webhooks');
    expect(one.status).toBe(200);
    expect(one.body).toEqual({ id: webhook.id, accountId: webhook.accountId, url, events: ['dbplane.maintenance.*'], description: 'pager', createdAt: webhook.createdAt });
    expect(all.body.webhooks).toEqual([one.body]);
    for (const response of [one, all]) expect(JSON.stringify(response.body)).not.toContain(webhook.secret);
  });

  it('subscribes to every event by default', async () => {
    const { url } = await receiver(200);
    const { webhook } = await tenantWithWebhook(url);
    expect(webhook.events).toEqual(['dbplane.*']);
  });

  it('answers a replayed Idempotency-Key with the first webhook and creates no second one', async () => {
    const { url } = await receiver(200);
    const { api } = await newTenant(admin, runtime.apiUrl, 'replay');
    const first = await api.post('/webhooks', { url }, { 'idempotency-key': 'hook-1' });
    const again = await api.post('/webhooks', { url }, { 'idempotency-key': 'hook-1' });
    expect(again.status).toBe(201);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.body.id).toBe(first.body.id);
    expect((await api.get('/webhooks')).body.webhooks).toHaveLength(1);
  });

  it.each([
    [{}, '/body/url'],
    [{ url: 'not a url' }, '/body/url'],
    [{ url: 'ftp://127.0.0.1/x' }, '/body/url'],
    [{ url: 'http://127.0.0.1:1/', events: ['dbplane.nothing.*'] }, '/body/events/0'],
    [{ url: 'http://127.0.0.1:1/', events: ['*'] }, '/body/events/0'],
    [{ url: 'http://127.0.0.1:1/', events: [] }, '/body/events'],
    [{ url: 'http://127.0.0.1:1/', secret: 'mine' }, '/body'],
  ])('answers 400 naming the field for %j', async (body, pointer) => {
    const { api } = await newTenant(admin, runtime.apiUrl, 'bad');
    const response = await api.post('/webhooks', body);
    expect(response.status, JSON.stringify(response.body)).toBe(400);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(response.body.errors.map((e: { pointer: string }) => e.pointer)).toContain(pointer);
    expect((await api.get('/webhooks')).body.webhooks).toEqual([]);
  });

  it('refuses the loopback receiver, and plain http, without the operator setting', async () => {
    const { url } = await receiver(200);
    const { api } = await newTenant(admin, runtime.apiUrl, 'strict');
    strictPolicy();
    const loopback = await api.post('/webhooks', { url: url.replace('http:', 'https:') });
    const plain = await api.post('/webhooks', { url });
    const metadata = await api.post('/webhooks', { url: 'https://169.254.169.254/latest/meta-data/' });
    // Through the system resolver: localhost is in /etc/hosts.
    const named = await api.post('/webhooks', { url: url.replace('http://127.0.0.1', 'https://localhost') });
    expect(loopback.status).toBe(400);
    expect(loopback.body.errors).toEqual([{ pointer: '/body/url', detail: expect.stringContaining('loopback address (127.0.0.1)') }]);
    expect(plain.body.errors).toEqual([{ pointer: '/body/url', detail: 'must be an https URL' }]);
    expect(metadata.body.errors).toEqual([{ pointer: '/body/url', detail: expect.stringContaining('metadata') }]);
    expect(named.body.errors).toEqual([{ pointer: '/body/url', detail: expect.stringMatching(/the host localhost resolves to a loopback address/) }]);
    expect((await api.get('/webhooks')).body.webhooks).toEqual([]);
  });
});

describe('delivery', () => {
  it('POSTs the event signed with the secret; a wrong secret does not verify', async () => {
    const { url, received } = await receiver(200);
    const { accountId, api, webhook } = await tenantWithWebhook(url);
    await publish(accountId);

    expect(received).toHaveLength(1);
    const [{ headers, body }] = received;
    const event = JSON.parse(body);
    expect(event).toEqual({
      id: headers['dbplane-event-id'], type: 'dbplane.database.status-changed', time: expect.any(String),
      detail: expect.objectContaining({ accountId, from: 'creating', to: 'running' }),
    });
    const header = headers['dbplane-signature'] as string;
    expect(header).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
    expect(Math.abs(Number(/t=(\d+)/.exec(header)![1]) - Date.now() / 1000)).toBeLessThan(60);
    expect(verify(webhook.secret, header, body)).toBe(true);
    expect(verify(`${webhook.secret}x`, header, body)).toBe(false);
    expect(verify(webhook.secret, header, body.replace('running', 'stopped'))).toBe(false);

    const [delivery] = await deliveries(api, webhook.id);
    expect(delivery).toMatchObject({ eventId: event.id, eventType: event.type, status: 'succeeded' });
    expect(delivery.attempts).toEqual([expect.objectContaining({ attempt: 1, outcome: 'delivered', statusCode: 200, durationMs: expect.any(Number) })]);
  });

  it('sends only the event types a webhook subscribes to', async () => {
    const { url, received } = await receiver(200);
    const { accountId } = await tenantWithWebhook(url, { events: ['dbplane.maintenance.*', 'dbplane.database.upgraded'] });
    await publish(accountId);
    expect(received).toEqual([]);
  });

  it('tries a receiver that answers 500 twice then 200 three times, with backoff, then stops', async () => {
    const { url, received } = await receiver(500, 500, 200);
    const { accountId, api, webhook } = await tenantWithWebhook(url);
    await publish(accountId);

    const [first] = await deliveries(api, webhook.id);
    expect(first).toMatchObject({ status: 'pending', attempts: [{ attempt: 1, outcome: 'will_retry', statusCode: 500 }] });
    const delay = Date.parse(first.nextAttemptAt) - Date.parse(first.attempts[0].at);
    expect(delay).toBe(30_000);
    // Not due yet: a tick now attempts nothing.
    await runtime.fireSchedule('WebhookRetries', new Date(Date.parse(first.nextAttemptAt) - 1_000));
    expect(received).toHaveLength(1);

    const settled = await retryUntilSettled(api, webhook.id);
    expect(settled.status).toBe('succeeded');
    expect(settled.attempts.map((a: any) => [a.attempt, a.outcome, a.statusCode])).toEqual([[1, 'will_retry', 500], [2, 'will_retry', 500], [3, 'delivered', 200]]);
    expect(Date.parse(settled.attempts[1].nextAttemptAt) - Date.parse(settled.attempts[1].at)).toBe(60_000);
    expect(received).toHaveLength(3);
    expect(new Set(received.map((r) => r.body)).size).toBe(1);
    expect(received.every((r) => verify(webhook.secret, r.headers['dbplane-signature'] as string, r.body))).toBe(true);

    await runtime.fireSchedule('WebhookRetries', new Date(Date.now() + 3_600_000));
    expect(received).toHaveLength(3);
  });

  it(`gives up after ${maxAttempts} attempts at a receiver that keeps answering 503`, async () => {
    const { url, received } = await receiver(503);
    const { accountId, api, webhook } = await tenantWithWebhook(url);
    await publish(accountId);
    const settled = await retryUntilSettled(api, webhook.id);
    expect(settled.status).toBe('failed');
    expect(settled.attempts.map((a: any) => a.outcome)).toEqual([...Array(maxAttempts - 1).fill('will_retry'), 'failed']);
    expect(settled.nextAttemptAt).toBeUndefined();
    expect(received).toHaveLength(maxAttempts);
  });

  it('treats a 4xx other than 429 as final', async () => {
    const { url, received } = await receiver(410);
    const { accountId, api, webhook } = await tenantWithWebhook(url);
    await publish(accountId);
    await runtime.fireSchedule('WebhookRetries', new Date(Date.now() + 3_600_000));
    const [delivery] = await deliveries(api, webhook.id);
    expect(delivery).toMatchObject({ status: 'failed', attempts: [{ attempt: 1, outcome: 'failed', statusCode: 410 }] });
    expect(received).toHaveLength(1);
  });

  it('retries a 429', async () => {
    const { url, received } = await receiver(429, 204);
    const { accountId, api, webhook } = await tenantWithWebhook(url);
    await publish(accountId);
    expect((await retryUntilSettled(api, webhook.id)).attempts.map((a: any) => a.statusCode)).toEqual([429, 204]);
    expect(received).toHaveLength(2);
  });

  it('refuses the receiver at delivery once the operator setting is withdrawn (checked again at every attempt)', async () => {
    const { url, received } = await receiver(200);
    const { accountId, api, webhook } = await tenantWithWebhook(url);
    strictPolicy();
    await publish(accountId);
    const [delivery] = await deliveries(api, webhook.id);
    expect(delivery).toMatchObject({ status: 'failed', attempts: [{ attempt: 1, outcome: 'failed', error: 'must be an https URL' }] });
    expect(received).toEqual([]);
  });

  it('refuses a loopback address at delivery even over https', async () => {
    const { url, received } = await receiver(200);
    process.env[envNames.outboundAllow] = '127.0.0.1/32';
    const { accountId, api, webhook } = await tenantWithWebhook(url.replace('http:', 'https:'));
    strictPolicy();
    await publish(accountId);
    const [delivery] = await deliveries(api, webhook.id);
    expect(delivery.attempts[0]).toMatchObject({ outcome: 'failed', error: expect.stringContaining('loopback address (127.0.0.1)') });
    expect(received).toEqual([]);
  });

  it('signs with the new secret after a rotation', async () => {
    const { url, received } = await receiver(200);
    const { accountId, api, webhook } = await tenantWithWebhook(url);
    const rotated = await api.post(`/webhooks/${webhook.id}/rotate-secret`);
    expect(rotated.status).toBe(200);
    expect(rotated.body.secret).toMatch(/^whsec_/);
    expect(rotated.body.secret).not.toBe(webhook.secret);
    await publish(accountId);
    const [{ headers, body }] = received;
    expect(verify(rotated.body.secret, headers['dbplane-signature'] as string, body)).toBe(true);
    expect(verify(webhook.secret, headers['dbplane-signature'] as string, body)).toBe(false);
    expect(JSON.stringify((await api.get(`/webhooks/${webhook.id}`)).body)).not.toContain(rotated.body.secret);
  });

  it('never writes the secret to the logs', async () => {
    const { url } = await receiver(500, 200);
    const captured: string[] = [];
    const writes = [process.stdout, process.stderr].map((stream) => {
      const original = stream.write.bind(stream);
      stream.write = ((chunk: string | Uint8Array, ...rest: any[]) => {
        captured.push(String(chunk));
        return original(chunk, ...rest);
      }) as typeof stream.write;
      return () => (stream.write = original);
    });
    const level = logger.getLevelName();
    logger.setLogLevel('DEBUG');
    try {
      const { accountId, api, webhook } = await tenantWithWebhook(url);
      await publish(accountId);
      await retryUntilSettled(api, webhook.id);
      const rotated = await api.post(`/webhooks/${webhook.id}/rotate-secret`);
      const log = captured.join('');
      // The capture works: the delivery attempts were logged, with their ids.
      expect(log).toContain('webhook delivery attempt');
      expect(log).toContain(webhook.id);
      expect(log).not.toContain(webhook.secret);
      expect(log).not.toContain(rotated.body.secret);
      expect(log).not.toContain('v1=');
    } finally {
      logger.setLogLevel(level);
      writes.forEach((restore) => restore());
    }
  });
});

describe('tenancy', () => {
  it("answers 404 for another account's webhook, whatever the call", async () => {
    const { url } = await receiver(200);
    const alice = await tenantWithWebhook(url);
    const bob = await newTenant(admin, runtime.apiUrl, 'bob');
    for (const response of [
      await bob.api.get(`/webhooks/${alice.webhook.id}`),
      await bob.api.get(`/webhooks/${alice.webhook.id}/deliveries`),
      await bob.api.post(`/webhooks/${alice.webhook.id}/rotate-secret`),
      await bob.api.delete(`/webhooks/${alice.webhook.id}`),
    ]) {
      expect(response.status).toBe(404);
      expect(response.headers.get('content-type')).toBe('application/problem+json');
    }
    expect((await bob.api.get('/webhooks')).body.webhooks).toEqual([]);
    expect((await alice.api.get(`/webhooks/${alice.webhook.id}`)).status).toBe(200);
  });

  it("delivers an account's events to its own webhooks only", async () => {
    const aliceHook = await receiver(200);
    const bobHook = await receiver(200);
    const alice = await tenantWithWebhook(aliceHook.url);
    const bob = await tenantWithWebhook(bobHook.url);
    await publish(bob.accountId);
    expect(aliceHook.received).toEqual([]);
    expect(bobHook.received).toHaveLength(1);
    expect(JSON.parse(bobHook.received[0].body).detail.accountId).toBe(bob.accountId);
  });

  it('stops delivering once the webhook is deleted, pending retries included', async () => {
    const { url, received } = await receiver(500);
    const { accountId, api, webhook } = await tenantWithWebhook(url);
    await publish(accountId);
    expect((await api.delete(`/webhooks/${webhook.id}`)).status).toBe(200);
    expect((await api.get(`/webhooks/${webhook.id}`)).status).toBe(404);
    await runtime.fireSchedule('WebhookRetries', new Date(Date.now() + 3_600_000));
    await publish(accountId);
    expect(received).toHaveLength(1);
  });
});

describe('CLI', () => {
  it('creates, lists, shows deliveries of and deletes webhooks', async () => {
    const { url, received } = await receiver(200);
    const { accountId, token } = await newTenant(admin, runtime.apiUrl, 'cli');
    const env = { DBPLANE_API_URL: runtime.apiUrl, DBPLANE_TOKEN: token, DBPLANE_CONFIG: join(tmpdir(), `dbplane-webhooks-${accountId}.json`) };

    const created = succeeded(await dbplane(['webhooks', 'create', url, '--events', 'dbplane.database.*, dbplane.maintenance.*', '--description', 'ops'], env));
    const secret = /secret:\s+(whsec_\S+)/.exec(created.stdout)?.[1];
    const id = /id:\s+(wh-\S+)/.exec(created.stdout)?.[1];
    expect(secret).toBeDefined();
    expect(created.stdout).toContain('dbplane.database.*,dbplane.maintenance.*');
    expect(created.stderr).toContain('shown only once');

    const listed = succeeded(await dbplane(['webhooks', 'list'], env));
    expect(listed.stdout).toMatch(new RegExp(`^${id}\\s+${url}\\s+dbplane.database.\\*,dbplane.maintenance.\\*`, 'm'));
    expect(listed.stdout).not.toContain(secret);

    await publish(accountId);
    expect(received).toHaveLength(1);
    const shown = succeeded(await dbplane(['webhooks', 'deliveries', id!, '--json'], env));
    expect(JSON.parse(shown.stdout).deliveries).toEqual([expect.objectContaining({ status: 'succeeded', eventType: 'dbplane.database.status-changed' })]);

    expect(succeeded(await dbplane(['webhooks', 'delete', id!], env)).stdout).toBe(`deleted webhook ${id} (${url})\n`);
    expect(JSON.parse(succeeded(await dbplane(['webhooks', 'list', '--json'], env)).stdout)).toEqual({ webhooks: [] });
  });

  it('exits 1 naming the field when the API refuses the URL, 2 without one', async () => {
    const { token } = await newTenant(admin, runtime.apiUrl, 'cli-bad');
    const env = { DBPLANE_API_URL: runtime.apiUrl, DBPLANE_TOKEN: token, DBPLANE_CONFIG: join(tmpdir(), 'dbplane-webhooks-bad.json') };
    const refused = await dbplane(['webhooks', 'create', 'https://10.0.0.1/hook'], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('/body/url: the host 10.0.0.1 resolves to a private address');
    expect((await dbplane(['webhooks', 'create'], env)).code).toBe(2);
  });
});
