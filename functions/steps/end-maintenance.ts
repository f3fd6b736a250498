import { endMaintenance, maintenanceStep } from '#core/maintenance-steps.ts';
import { maintenanceDeps } from './maintenance-deps.ts';

export const handler = maintenanceStep(async (input) => endMaintenance(await maintenanceDeps(), input));
