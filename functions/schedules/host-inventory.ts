import middy from '@middy/core';
import { agentClient } from '#core/agent-client.ts';
import { getStore } from '#core/http.ts';

/** Records what each host can run, so GET /engines and version checks read the table, not the hosts. */
export const handler = middy({ timeoutEarlyInMillis: 0 }).handler(async () => {
  const host = await (await agentClient()).host();
  await getStore().putHost(host, new Date().toISOString());
  return { hostId: host.hostId, versions: host.versions.length };
});
