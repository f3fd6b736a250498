import { apiHandler, json } from '#core/http.ts';
import { webhookDeps as deps } from '#core/webhooks-store.ts';
import { createWebhook, deleteWebhook, findWebhook, listDeliveries, listWebhooks, rotateSecret, webhookView } from '#core/webhooks.ts';
import { CreateWebhookBody, IdParams } from './schemas.ts';

export const create = apiHandler({ access: 'account', body: CreateWebhookBody, idempotent: true }, async ({ caller, body }) => {
  const webhook = await createWebhook(deps(), caller, body);
  return json(201, webhook, { location: `/webhooks/${webhook.id}` });
});

export const list = apiHandler({ access: 'account' }, async ({ caller }) => {
  return json(200, { webhooks: await listWebhooks(deps(), caller) });
});

export const get = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params }) => {
  return json(200, webhookView(await findWebhook(deps(), caller, params.id)));
});

export const remove = apiHandler({ access: 'account', params: IdParams, idempotent: true }, async ({ caller, params }) => {
  return json(200, await deleteWebhook(deps(), caller, params.id));
});

export const rotate = apiHandler({ access: 'account', params: IdParams, idempotent: true }, async ({ caller, params }) => {
  return json(200, await rotateSecret(deps(), caller, params.id));
});

export const deliveries = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params }) => {
  return json(200, { deliveries: await listDeliveries(deps(), caller, params.id) });
});
