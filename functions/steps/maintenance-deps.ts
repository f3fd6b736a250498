import { getMaintenanceStore } from '#core/maintenance-store.ts';
import type { MaintenanceRunDeps } from '#core/maintenance.ts';
import { Workflows } from '#core/workflows.ts';
import { stepDeps } from './deps.ts';

let workflows: Workflows | undefined;
/** The Maintenance workflow's dependencies: the steps' own, the maintenance items, and the workflows its operations run. */
export async function maintenanceDeps(): Promise<MaintenanceRunDeps> {
  return { ...(await stepDeps()), maintenance: getMaintenanceStore(), workflows: (workflows ??= new Workflows()) };
}
