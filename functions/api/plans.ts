import { apiHandler, json } from '#core/http.ts';
import { databaseView } from '#core/model.ts';
import { previewPlanChange, requestPlanChange } from '#core/plans.ts';
import { backupDeps } from './deps.ts';
import { ChangePlanBody, IdParams, PlanPreviewQuery } from './schemas.ts';

export const preview = apiHandler({ access: 'account', params: IdParams, query: PlanPreviewQuery }, async ({ caller, params, query }) => {
  return json(200, await previewPlanChange(await backupDeps(), caller, params.id, query.plan));
});

export const change = apiHandler({ access: 'account', params: IdParams, body: ChangePlanBody, idempotent: true }, async ({ caller, params, body }) => {
  const { database, operation } = await requestPlanChange(await backupDeps(), caller, params.id, body);
  return json(202, { database: databaseView(database), operation }, { location: operation ? `/operations/${operation.id}` : `/databases/${database.id}` });
});
