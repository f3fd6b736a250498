import { apiHandler, json } from '#core/http.ts';
import { getMaintenanceStore } from '#core/maintenance-store.ts';
import {
  applyNow, findMaintenance, getWindow, listMaintenance, type MaintenanceDeps, postpone, setFreezes, setWindow,
} from '#core/maintenance.ts';
import { getRollout, scheduleFleetMaintenance } from '#core/maintenance-rollouts.ts';
import { apiDeps } from './deps.ts';
import { FleetMaintenanceBody, FreezeBody, IdParams, MaintenanceParams, MaintenanceWindow } from './schemas.ts';

const deps = (): MaintenanceDeps => ({ ...apiDeps(), maintenance: getMaintenanceStore() });

export const getMaintenanceWindow = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params }) => {
  return json(200, await getWindow(deps(), caller, params.id));
});

export const putMaintenanceWindow = apiHandler({ access: 'account', params: IdParams, body: MaintenanceWindow }, async ({ caller, params, body }) => {
  return json(200, await setWindow(deps(), caller, params.id, body));
});

export const list = apiHandler({ access: 'account', params: IdParams }, async ({ caller, params }) => {
  return json(200, await listMaintenance(deps(), caller, params.id));
});

export const get = apiHandler({ access: 'account', params: MaintenanceParams }, async ({ caller, params }) => {
  return json(200, await findMaintenance(deps(), caller, params.id, params.maintenanceId));
});

export const postponeOne = apiHandler({ access: 'account', params: MaintenanceParams, idempotent: true }, async ({ caller, params }) => {
  return json(200, await postpone(deps(), caller, params.id, params.maintenanceId));
});

export const applyOneNow = apiHandler({ access: 'account', params: MaintenanceParams, idempotent: true }, async ({ caller, params }) => {
  return json(202, await applyNow(deps(), caller, params.id, params.maintenanceId));
});

export const getFreezes = apiHandler({ access: 'account' }, async ({ caller }) => {
  return json(200, { periods: await getMaintenanceStore().freezes(caller.accountId) });
});

export const putFreezes = apiHandler({ access: 'account', body: FreezeBody }, async ({ caller, body }) => {
  return json(200, await setFreezes(deps(), caller, body.periods));
});

export const scheduleFleet = apiHandler({ access: 'admin', body: FleetMaintenanceBody, idempotent: true }, async ({ body }) => {
  const rollout = await scheduleFleetMaintenance(deps(), body);
  return json(201, rollout, { location: `/admin/maintenance/${rollout.id}` });
});

export const getFleet = apiHandler({ access: 'admin', params: IdParams }, async ({ params }) => {
  return json(200, await getRollout(deps(), params.id));
});
