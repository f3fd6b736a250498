import type { z } from 'zod';
import * as s from './schemas.ts';

/**
 * The one route table: CDK deploys an HTTP API route and a Lambda per entry, the local runtime serves
 * the same table, and /openapi.json is generated from it.
 */

export type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
/** `public`: no token; `account`: any valid token; `admin`: a token with the admin scope. */
export type Access = 'public' | 'account' | 'admin';

export interface Route {
  readonly method: Method;
  readonly path: string;
  /** Module (relative to the project root) and export of the handler. */
  readonly entry: string;
  readonly handler: string;
  readonly access: Access;
  /** The handler calls the agent (its function may read the agent secret). */
  readonly agent?: boolean;
  readonly summary: string;
  readonly params?: z.ZodType;
  readonly query?: z.ZodType;
  readonly body?: z.ZodType;
  readonly response: { readonly status: number; readonly schema: z.ZodType };
}

export const routes: readonly Route[] = [
  { method: 'GET', path: '/openapi.json', entry: 'functions/api/openapi.ts', handler: 'handler', access: 'public', summary: 'This API, as OpenAPI 3.1', response: { status: 200, schema: s.OpenApiDocument } },
  { method: 'GET', path: '/engines', entry: 'functions/api/catalog.ts', handler: 'listEngines', access: 'public', summary: 'Engines and the versions the hosts can run', response: { status: 200, schema: s.EngineList } },
  { method: 'GET', path: '/plans', entry: 'functions/api/catalog.ts', handler: 'listPlans', access: 'public', summary: 'Plans and what each gives', response: { status: 200, schema: s.PlanList } },
  { method: 'POST', path: '/databases', entry: 'functions/api/databases.ts', handler: 'create', access: 'account', summary: 'Create a database (starts a provision operation)', body: s.CreateDatabaseBody, response: { status: 202, schema: s.DatabaseCreated } },
  { method: 'GET', path: '/databases', entry: 'functions/api/databases.ts', handler: 'list', access: 'account', summary: "The caller's databases", response: { status: 200, schema: s.DatabaseList } },
  { method: 'GET', path: '/databases/{id}', entry: 'functions/api/databases.ts', handler: 'get', access: 'account', agent: true, summary: 'One database, by id or name', params: s.IdParams, response: { status: 200, schema: s.DatabaseView } },
  { method: 'PUT', path: '/databases/{id}/tags', entry: 'functions/api/databases.ts', handler: 'tag', access: 'account', summary: 'Replace the tags (key=value or labels, at most 20; operators can target maintenance by tag)', params: s.IdParams, body: s.TagsBody, response: { status: 200, schema: s.DatabaseView } },
  { method: 'DELETE', path: '/databases/{id}', entry: 'functions/api/databases.ts', handler: 'remove', access: 'account', summary: 'Delete a database (starts a deprovision operation; backups are kept for their retention unless purge=true)', params: s.IdParams, query: s.DeleteDatabaseQuery, response: { status: 202, schema: s.DatabaseDeleted } },
  { method: 'GET', path: '/databases/{id}/backups', entry: 'functions/api/backups.ts', handler: 'list', access: 'account', summary: "A database's backups, newest first, with their expiry", params: s.IdParams, response: { status: 200, schema: s.BackupList } },
  { method: 'POST', path: '/databases/{id}/backups', entry: 'functions/api/backups.ts', handler: 'create', access: 'account', summary: 'Take a manual backup (starts a backup operation)', params: s.IdParams, response: { status: 202, schema: s.BackupStarted } },
  { method: 'GET', path: '/databases/{id}/backups/recovery-window', entry: 'functions/api/backups.ts', handler: 'window', access: 'account', agent: true, summary: 'The earliest and latest instants a point-in-time restore can reach', params: s.IdParams, response: { status: 200, schema: s.RecoveryWindow } },
  { method: 'GET', path: '/databases/{id}/backups/{backupId}', entry: 'functions/api/backups.ts', handler: 'get', access: 'account', summary: 'One backup', params: s.BackupParams, response: { status: 200, schema: s.BackupView } },
  { method: 'GET', path: '/databases/{id}/backups/{backupId}/download', entry: 'functions/api/backups.ts', handler: 'download', access: 'account', agent: true, summary: 'A signed, time-limited URL serving the backup as a pg_dump (where it has one) or a tar of the data directory', params: s.BackupParams, query: s.DownloadQuery, response: { status: 200, schema: s.DownloadLink } },
  { method: 'PUT', path: '/databases/{id}/backup-schedule', entry: 'functions/api/backups.ts', handler: 'schedule', access: 'account', summary: "Set the daily backup's UTC hour and retention overrides", params: s.IdParams, body: s.BackupScheduleBody, response: { status: 200, schema: s.DatabaseView } },
  { method: 'POST', path: '/databases/{id}/restore', entry: 'functions/api/backups.ts', handler: 'restore', access: 'account', agent: true, summary: 'Restore to a backup or a point in time, in place or into a new database', params: s.IdParams, body: s.RestoreRequest, response: { status: 202, schema: s.RestoreStarted } },
  { method: 'GET', path: '/databases/{id}/plan-change/preview', entry: 'functions/api/plans.ts', handler: 'preview', access: 'account', agent: true, summary: 'What a change to another plan would do, and whether it may start now; changes nothing', params: s.IdParams, query: s.PlanPreviewQuery, response: { status: 200, schema: s.PlanChangePreview } },
  { method: 'POST', path: '/databases/{id}/plan', entry: 'functions/api/plans.ts', handler: 'change', access: 'account', agent: true, summary: 'Change the plan now (starts a change_plan operation) or queue it for the maintenance window', params: s.IdParams, body: s.ChangePlanBody, response: { status: 202, schema: s.PlanChangeStarted } },
  { method: 'GET', path: '/databases/{id}/upgrades', entry: 'functions/api/upgrades.ts', handler: 'list', access: 'account', summary: 'The versions the database can be upgraded to (never a downgrade), with end-of-life dates', params: s.IdParams, response: { status: 200, schema: s.UpgradeList } },
  { method: 'GET', path: '/databases/{id}/upgrades/report', entry: 'functions/api/upgrades.ts', handler: 'report', access: 'account', agent: true, summary: 'The pre-upgrade report: checks the live database against a target version, changes nothing', params: s.IdParams, query: s.UpgradeReportQuery, response: { status: 200, schema: s.UpgradeReport } },
  { method: 'POST', path: '/databases/{id}/upgrade', entry: 'functions/api/upgrades.ts', handler: 'upgrade', access: 'account', agent: true, summary: 'Upgrade the engine now (starts an upgrade operation) or queue it for the maintenance window', params: s.IdParams, body: s.UpgradeBody, response: { status: 202, schema: s.UpgradeStarted } },
  { method: 'GET', path: '/databases/{id}/maintenance-window', entry: 'functions/api/maintenance.ts', handler: 'getMaintenanceWindow', access: 'account', summary: 'The weekly maintenance window (UTC) and its next occurrence', params: s.IdParams, response: { status: 200, schema: s.WindowView } },
  { method: 'PUT', path: '/databases/{id}/maintenance-window', entry: 'functions/api/maintenance.ts', handler: 'putMaintenanceWindow', access: 'account', summary: 'Set the weekly maintenance window: weekday, UTC hour, duration (1-24 h, default 8); waiting maintenance moves into it', params: s.IdParams, body: s.MaintenanceWindow, response: { status: 200, schema: s.WindowView } },
  { method: 'GET', path: '/databases/{id}/maintenance', entry: 'functions/api/maintenance.ts', handler: 'list', access: 'account', summary: 'Upcoming and past maintenance, with the window each runs in and the operation it ran', params: s.IdParams, response: { status: 200, schema: s.MaintenanceList } },
  { method: 'GET', path: '/databases/{id}/maintenance/{maintenanceId}', entry: 'functions/api/maintenance.ts', handler: 'get', access: 'account', summary: 'One maintenance item with its history', params: s.MaintenanceParams, response: { status: 200, schema: s.Maintenance } },
  { method: 'POST', path: '/databases/{id}/maintenance/{maintenanceId}/postpone', entry: 'functions/api/maintenance.ts', handler: 'postponeOne', access: 'account', summary: 'Postpone a waiting maintenance to the following window (at most maxPostponements times, never past its deadline)', params: s.MaintenanceParams, response: { status: 200, schema: s.Maintenance } },
  { method: 'POST', path: '/databases/{id}/maintenance/{maintenanceId}/apply-now', entry: 'functions/api/maintenance.ts', handler: 'applyOneNow', access: 'account', summary: 'Start a waiting maintenance now, outside the window', params: s.MaintenanceParams, response: { status: 202, schema: s.Maintenance } },
  { method: 'GET', path: '/account/maintenance-freezes', entry: 'functions/api/maintenance.ts', handler: 'getFreezes', access: 'account', summary: "The account's freeze periods: no maintenance starts in them", response: { status: 200, schema: s.FreezeList } },
  { method: 'PUT', path: '/account/maintenance-freezes', entry: 'functions/api/maintenance.ts', handler: 'putFreezes', access: 'account', summary: 'Replace the freeze periods (each at most 14 days, at most 30 days a year)', body: s.FreezeBody, response: { status: 200, schema: s.FreezeList } },
  { method: 'GET', path: '/databases/{id}/operations', entry: 'functions/api/operations.ts', handler: 'listForDatabase', access: 'account', summary: "A database's operations, newest first", params: s.IdParams, response: { status: 200, schema: s.OperationList } },
  { method: 'GET', path: '/operations/{id}', entry: 'functions/api/operations.ts', handler: 'get', access: 'account', summary: 'One operation with its steps', params: s.IdParams, response: { status: 200, schema: s.Operation } },
  { method: 'GET', path: '/databases/{id}/events', entry: 'functions/api/events.ts', handler: 'listForDatabase', access: 'account', summary: "A database's audit trail, newest first", params: s.IdParams, response: { status: 200, schema: s.AuditEventList } },
  { method: 'POST', path: '/webhooks', entry: 'functions/api/webhooks.ts', handler: 'create', access: 'account', summary: "Register a webhook for the caller's account's events; its signing secret is shown once", body: s.CreateWebhookBody, response: { status: 201, schema: s.WebhookWithSecret } },
  { method: 'GET', path: '/webhooks', entry: 'functions/api/webhooks.ts', handler: 'list', access: 'account', summary: "The caller's webhooks (without secrets)", response: { status: 200, schema: s.WebhookList } },
  { method: 'GET', path: '/webhooks/{id}', entry: 'functions/api/webhooks.ts', handler: 'get', access: 'account', summary: 'One webhook (without its secret)', params: s.IdParams, response: { status: 200, schema: s.Webhook } },
  { method: 'DELETE', path: '/webhooks/{id}', entry: 'functions/api/webhooks.ts', handler: 'remove', access: 'account', summary: 'Delete a webhook; pending retries stop', params: s.IdParams, response: { status: 200, schema: s.Webhook } },
  { method: 'POST', path: '/webhooks/{id}/rotate-secret', entry: 'functions/api/webhooks.ts', handler: 'rotate', access: 'account', summary: 'Replace the signing secret (shown once); the old one stops signing at once', params: s.IdParams, response: { status: 200, schema: s.WebhookWithSecret } },
  { method: 'GET', path: '/webhooks/{id}/deliveries', entry: 'functions/api/webhooks.ts', handler: 'deliveries', access: 'account', summary: "A webhook's recent deliveries with every attempt (status code, duration, next attempt)", params: s.IdParams, response: { status: 200, schema: s.WebhookDeliveryList } },
  { method: 'POST', path: '/admin/maintenance', entry: 'functions/api/maintenance.ts', handler: 'scheduleFleet', access: 'admin', summary: 'Schedule a maintenance (minor upgrade, plan change) of the databases a selector names, in waves; each is noticed at least 24 h before its window', body: s.FleetMaintenanceBody, response: { status: 201, schema: s.Rollout } },
  { method: 'GET', path: '/admin/maintenance/{id}', entry: 'functions/api/maintenance.ts', handler: 'getFleet', access: 'admin', summary: 'A maintenance rollout and its waves', params: s.IdParams, response: { status: 200, schema: s.Rollout } },
  { method: 'POST', path: '/admin/accounts', entry: 'functions/api/admin.ts', handler: 'createAccount', access: 'admin', summary: 'Create an account', body: s.CreateAccountBody, response: { status: 201, schema: s.Account } },
  { method: 'POST', path: '/admin/accounts/{id}/tokens', entry: 'functions/api/admin.ts', handler: 'createToken', access: 'admin', summary: 'Create an API token for an account (shown once)', params: s.IdParams, body: s.CreateTokenBody, response: { status: 201, schema: s.TokenCreated } },
];

/** Answers what matches no route (404, or 405 with the allowed methods); API Gateway's `$default` route. */
export const fallbackRoute = { entry: 'functions/api/fallback.ts', handler: 'handler' } as const;
/** The Lambda authorizer for `account` and `admin` routes. */
export const authorizer = { entry: 'functions/api/authorizer.ts', handler: 'handler' } as const;

/** `/databases/{id}` → a matcher; used by the local server and the fallback handler. */
export function matchPath(template: string, path: string): Record<string, string> | undefined {
  const names: string[] = [];
  const pattern = template.replace(/\{(\w+)\}/g, (_, name: string) => {
    names.push(name);
    return '([^/]+)';
  });
  const match = new RegExp(`^${pattern}$`).exec(path);
  if (!match) return undefined;
  return Object.fromEntries(names.map((name, i) => [name, decodeURIComponent(match[i + 1])]));
}
