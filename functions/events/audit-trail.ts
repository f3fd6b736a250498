import middy from '@middy/core';
import type { EventBridgeEvent } from 'aws-lambda';
import { z } from 'zod';
import { getStore } from '#core/http.ts';
import { newId } from '#core/ids.ts';

const Detail = z.object({ databaseId: z.string(), operationId: z.string().optional() }).loose();

/**
 * Keeps each database's audit trail from the bus. The item id is derived from the event's own id,
 * so a redelivered event overwrites itself instead of appearing twice.
 */
export const handler = middy<EventBridgeEvent<string, unknown>>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const detail = Detail.parse(event.detail);
  const timePrefix = newId('ev', Date.parse(event.time)).slice(0, 13);
  await getStore().putEvent({
    id: `${timePrefix}${event.id.replaceAll('-', '')}`,
    databaseId: detail.databaseId,
    type: event['detail-type'],
    at: event.time,
    operationId: detail.operationId,
    detail,
  });
});
