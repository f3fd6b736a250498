import middy from '@middy/core';
import type { EventBridgeEvent } from 'aws-lambda';
import { z } from 'zod';
import { backupAfterChange } from '#core/backups.ts';
import { apiDeps } from '../api/deps.ts';

const Detail = z.object({ databaseId: z.string(), operationId: z.string(), kind: z.string(), status: z.string() }).loose();

/** When a restore or an upgrade has finished well (or a major upgrade rolled back after its cutover), starts the fresh base backup it needs. */
export const handler = middy<EventBridgeEvent<string, unknown>>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const detail = Detail.parse(event.detail);
  if (!['restore', 'upgrade'].includes(detail.kind) || !['succeeded', 'rolled_back'].includes(detail.status)) return;
  const deps = apiDeps();
  const change = await deps.store.getDatabaseOperation(detail.databaseId, detail.operationId);
  if (change) await backupAfterChange(deps, change);
});
