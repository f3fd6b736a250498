import { createDatabase, databaseNodes, deleteDatabase, findDatabase, setTags } from '#core/databases.ts';
import { apiHandler, json } from '#core/http.ts';
import { findPlan } from '#core/catalog.ts';
import { databaseView, resourceLimits } from '#core/model.ts';
import { apiDeps, backupDeps } from './deps.ts';
import { CreateDatabaseBody, DeleteDatabaseQuery, IdParams, TagsBody } from './schemas.ts';

export const create = apiHandler({ access: 'account', body: CreateDatabaseBody, idempotent: true }, async ({ caller, body }) => {
  const { database, operation, password } = await createDatabase(apiDeps(), caller, body);
  return json(202, { database: databaseView(database), operation, password }, { location: `/databases/${database.id}` });
});

export const tag = apiHandler({ access: 'account', params: IdParams, body: TagsBody, idempotent: true }, async ({ caller, params, body, store }) => {
  return json(200, databaseView(await setTags(store, caller, params.id, body.tags)));
});

export const list = apiHandler({ access: 'account' }, async ({ caller, store }) => {
  const databases = await store.listDatabases(caller.accountId);
  return json(200, { databases: databases.map(databaseView) });
});

export const get = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params, store }) => {
  const database = await findDatabase(store, caller, params.id);
  const nodes = await databaseNodes((await backupDeps()).agent, database);
  const limits = resourceLimits(findPlan(database.plan)!, await store.listHosts());
  return json(200, { ...databaseView(database), ...(nodes ? { nodes } : {}), limits });
});

export const remove = apiHandler({ access: 'account', params: IdParams, query: DeleteDatabaseQuery, idempotent: true }, async ({ caller, params, query }) => {
  const { database, operation } = await deleteDatabase(apiDeps(), caller, params.id, { purge: query.purge === 'true' });
  return json(202, { database: databaseView(database), operation });
});
