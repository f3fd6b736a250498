import middy from '@middy/core';
import { runScheduledBackups } from '#core/backups.ts';
import { logger } from '#core/logger.ts';
import { apiDeps } from '../api/deps.ts';

/** EventBridge's scheduled event says when it fired: the hour whose databases are due. */
export const handler = middy<{ time?: string }>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const result = await runScheduledBackups(apiDeps(), event.time ? new Date(event.time) : new Date());
  if (result.started) logger.info('scheduled backups started', result);
  return result;
});
