import { findDatabase } from '#core/databases.ts';
import { NotFound } from '#core/errors.ts';
import { apiHandler, json } from '#core/http.ts';
import { IdParams } from './schemas.ts';

export const listForDatabase = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params, store }) => {
  const database = await findDatabase(store, caller, params.id);
  return json(200, { operations: await store.listOperations(database.id) });
});

export const get = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params, store }) => {
  const operation = await store.getOperation(params.id);
  // Operations of deleted databases stay readable by their owner: they are the audit of the deletion.
  if (!operation || operation.accountId !== caller.accountId) throw new NotFound(`no operation "${params.id}"`);
  return json(200, operation);
});
