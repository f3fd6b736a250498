import middy from '@middy/core';
import type { EventBridgeEvent } from 'aws-lambda';
import { z } from 'zod';
import { backupAfterRestore } from '#core/backups.ts';
import { apiDeps } from '../api/deps.ts';

const Detail = z.object({ databaseId: z.string(), operationId: z.string(), kind: z.string(), status: z.string() }).loose();

/** When a restore has finished well, starts the fresh base backup its new timeline needs. */
export const handler = middy<EventBridgeEvent<string, unknown>>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const detail = Detail.parse(event.detail);
  if (detail.kind !== 'restore' || detail.status !== 'succeeded') return;
  const deps = apiDeps();
  const restore = await deps.store.getDatabaseOperation(detail.databaseId, detail.operationId);
  if (restore) await backupAfterRestore(deps, restore);
});
