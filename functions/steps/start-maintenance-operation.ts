import { startMaintenanceOperation, maintenanceStep } from '#core/maintenance-steps.ts';
import { maintenanceDeps } from './maintenance-deps.ts';

export const handler = maintenanceStep(async (input) => startMaintenanceOperation(await maintenanceDeps(), input));
