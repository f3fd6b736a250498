import middy from '@middy/core';
import { pruneBackups } from '#core/backups.ts';
import { logger } from '#core/logger.ts';
import { backupDeps } from '../api/deps.ts';

export const handler = middy<{ time?: string }>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const result = await pruneBackups(await backupDeps(), event.time ? new Date(event.time) : new Date());
  if (result.removed) logger.info('backups pruned', result);
  return result;
});
