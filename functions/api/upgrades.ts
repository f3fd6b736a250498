import { apiHandler, json } from '#core/http.ts';
import { databaseView } from '#core/model.ts';
import { listUpgrades, requestUpgrade, upgradeReport } from '#core/upgrades.ts';
import { backupDeps } from './deps.ts';
import { IdParams, UpgradeBody, UpgradeReportQuery } from './schemas.ts';

export const list = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params }) => {
  return json(200, await listUpgrades(await backupDeps(), caller, params.id));
});

export const report = apiHandler({ access: 'account', params: IdParams, query: UpgradeReportQuery }, async ({ caller, params, query }) => {
  return json(200, await upgradeReport(await backupDeps(), caller, params.id, query.version));
});

export const upgrade = apiHandler({ access: 'account', params: IdParams, body: UpgradeBody, idempotent: true }, async ({ caller, params, body }) => {
  const { database, operation } = await requestUpgrade(await backupDeps(), caller, params.id, body);
  return json(202, { database: databaseView(database), operation }, { location: operation ? `/operations/${operation.id}` : `/databases/${database.id}` });
});
