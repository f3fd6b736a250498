import { checkMaintenanceOperation, maintenanceStep } from '#core/maintenance-steps.ts';
import { maintenanceDeps } from './maintenance-deps.ts';

export const handler = maintenanceStep(async (input) => checkMaintenanceOperation(await maintenanceDeps(), input));
