import middy from '@middy/core';
import type { EventBridgeEvent } from 'aws-lambda';
import { z } from 'zod';
import { logger } from '#core/logger.ts';
import { webhookDeps } from '#core/webhooks-store.ts';
import { deliverEvent, retryDueDeliveries } from '#core/webhooks.ts';

const Detail = z.object({ accountId: z.string() }).loose();

/** Every dbplane event: to the webhooks of the account it concerns that subscribe to its type. */
export const handler = middy<EventBridgeEvent<string, unknown>>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const detail = Detail.parse(event.detail);
  return deliverEvent(webhookDeps(), { id: event.id, type: event['detail-type'], time: event.time, accountId: detail.accountId, detail });
});

/** The `WebhookRetries` schedule: deliveries due by the instant the schedule fired (its event's `time`). */
export const retry = middy<{ time?: string }>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const result = await retryDueDeliveries(webhookDeps(), event.time ? new Date(event.time) : new Date());
  if (result.attempted) logger.info('webhook retries attempted', result);
  return result;
});
