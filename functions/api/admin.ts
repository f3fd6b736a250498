import { issueToken } from '#core/auth.ts';
import { NotFound } from '#core/errors.ts';
import { apiHandler, json } from '#core/http.ts';
import { newId } from '#core/ids.ts';
import { CreateAccountBody, CreateTokenBody, IdParams } from './schemas.ts';

export const createAccount = apiHandler({ access: 'admin', body: CreateAccountBody, idempotent: true }, async ({ body, store }) => {
  const account = { id: newId('acc'), name: body.name, createdAt: new Date().toISOString() };
  await store.putAccount(account);
  return json(201, account);
});

export const createToken = apiHandler({ access: 'admin', params: IdParams, body: CreateTokenBody, idempotent: true }, async ({ params, body, store }) => {
  if (!(await store.getAccount(params.id))) throw new NotFound(`no account "${params.id}"`);
  return json(201, await issueToken(store, params.id, body.name, body.scopes));
});
