import middy from '@middy/core';
import { logger } from '#core/logger.ts';
import { getMaintenanceStore } from '#core/maintenance-store.ts';
import { runMaintenanceDispatcher } from '#core/maintenance.ts';
import { apiDeps } from '../api/deps.ts';

/** EventBridge's scheduled event says when it fired: that instant is the dispatcher's clock (tests inject any week). */
export const handler = middy<{ time?: string }>({ timeoutEarlyInMillis: 0 }).handler(async (event) => {
  const result = await runMaintenanceDispatcher({ ...apiDeps(), maintenance: getMaintenanceStore() }, event.time ? new Date(event.time) : new Date());
  if (result.due) logger.info('maintenance dispatched', { ...result });
  return result;
});
