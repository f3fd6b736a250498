import { findDatabase } from '#core/databases.ts';
import { apiHandler, json } from '#core/http.ts';
import { IdParams } from './schemas.ts';

export const listForDatabase = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params, store }) => {
  const database = await findDatabase(store, caller, params.id);
  return json(200, { events: await store.listEvents(database.id) });
});
