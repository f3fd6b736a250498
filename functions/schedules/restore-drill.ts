import middy from '@middy/core';
import { runRestoreDrills } from '#core/backups.ts';
import { logger } from '#core/logger.ts';
import { apiDeps } from '../api/deps.ts';

export const handler = middy<{ time?: string }>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const result = await runRestoreDrills(apiDeps(), event.time ? new Date(event.time) : new Date());
  if (result.started) logger.info('restore drills started', result);
  return result;
});
