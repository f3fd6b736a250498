import { z } from 'zod';
import { EngineName, OfferedVersion, Plan, planIds } from '#core/catalog.ts';
import { Account, AuditEvent, Backup, DatabaseName, DatabaseView, Operation, Scope, Tags, TokenRecord } from '#core/model.ts';
import { DownloadFormat } from '#core/backups.ts';
import { FreezePeriod } from '#core/maintenance-model.ts';
import { Webhook, WebhookDelivery } from '#core/webhooks.ts';
export { BackupScheduleBody, RestoreRequest } from '#core/backups.ts';
export { ChangePlanBody, PlanPreviewQuery } from '#core/plans.ts';
export { UpgradeBody, UpgradeList, UpgradeReport, UpgradeReportQuery } from '#core/upgrades.ts';
export { MaintenanceWindow } from '#core/maintenance-window.ts';
export { FreezeBody, MaintenanceList, WindowView } from '#core/maintenance.ts';
export { Maintenance, Rollout } from '#core/maintenance-model.ts';
export { FleetMaintenanceBody } from '#core/maintenance-rollouts.ts';
export { CreateWebhookBody, Webhook, WebhookWithSecret } from '#core/webhooks.ts';

/** Request and response schemas of the HTTP API: the handlers parse with them and /openapi.json shows them. */

export const IdParams = z.object({ id: z.string().min(1).max(64) });
export const BackupParams = IdParams.extend({ backupId: z.string().min(1).max(64) });
export const MaintenanceParams = IdParams.extend({ maintenanceId: z.string().min(1).max(64) });
export const DeleteDatabaseQuery = z.object({
  purge: z.enum(['true', 'false']).default('false').describe('also delete every backup now and destroy the data key (crypto-shredding)'),
}).strict();

export const CreateDatabaseBody = z.object({
  name: DatabaseName,
  engine: EngineName,
  version: z.string().regex(/^\d+(\.\d+)?$/, 'a major ("17") or a major.minor ("17.10")').optional(),
  plan: z.enum(planIds as [string, ...string[]]),
  tags: Tags.optional(),
}).strict();

export const TagsBody = z.object({ tags: Tags }).strict();

export const DatabaseCreated = z.object({
  database: DatabaseView,
  operation: Operation,
  /** Shown once: only a SCRAM verifier of it is kept. */
  password: z.string(),
});

export const DatabaseList = z.object({ databases: z.array(DatabaseView) });
export const DatabaseDeleted = z.object({ database: DatabaseView, operation: Operation });
export const OperationList = z.object({ operations: z.array(Operation) });
export const AuditEventList = z.object({ events: z.array(AuditEvent) });

export const BackupView = Backup.extend({ expiresAt: z.string().optional().describe('when retention removes it; absent: kept') });
export const BackupList = z.object({ backups: z.array(BackupView) });
export const BackupStarted = z.object({ backup: Backup, operation: Operation });
export const RecoveryWindow = z.object({
  earliest: z.string().optional().describe('absent until the first backup completed'),
  latest: z.string().optional().describe('the last archived WAL: nothing later can be recovered yet'),
});
export const DownloadQuery = z.object({
  format: DownloadFormat.optional().describe('dump: the pg_dump taken with the backup (restore with pg_restore); base: a tar of the data directory. Default: dump where the backup has one'),
}).strict();
export const DownloadLink = z.object({ url: z.string(), expiresAt: z.string(), format: z.enum(['pg_dump', 'tar']) });
export const RestoreStarted = z.object({
  database: DatabaseView,
  operation: Operation,
  password: z.string().optional().describe('into a new database: its password, shown once'),
});

export const PlanChangePreview = z.object({
  allowed: z.boolean().describe('whether the change would start now'),
  reasons: z.array(z.string()).describe('why not, when it would not'),
  from: z.string(),
  to: z.string(),
  steps: z.array(z.string()).describe('what the change does, in order'),
  expectedUnavailabilitySeconds: z.number().describe('an estimate of how long new connections may wait at the gateway (held, not refused) during the change'),
});
export const PlanChangeStarted = z.object({
  database: DatabaseView,
  operation: Operation.optional().describe('absent with when=maintenance_window: the change is queued on the database (pendingPlanChange)'),
});

export const UpgradeStarted = z.object({
  database: DatabaseView,
  operation: Operation.optional().describe('absent with when=maintenance_window: the upgrade is queued on the database (pendingUpgrade)'),
});

export const EngineList = z.object({
  engines: z.array(z.object({
    engine: EngineName,
    defaultVersion: z.string().optional(),
    versions: z.array(OfferedVersion),
  })),
});
export const PlanList = z.object({ plans: z.array(Plan) });

export const CreateAccountBody = z.object({ name: z.string().min(1).max(100) }).strict();
export const CreateTokenBody = z.object({
  name: z.string().min(1).max(100),
  scopes: z.array(Scope).min(1).default(['databases']),
}).strict();
export const TokenCreated = TokenRecord.extend({ token: z.string().describe('shown once; only its SHA-256 is kept') });
export { Account, DatabaseView, Operation };

export const Problem = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string().optional(),
  instance: z.string().optional(),
  errors: z.array(z.object({ pointer: z.string(), detail: z.string() })).optional(),
});

export const WebhookList = z.object({ webhooks: z.array(Webhook) });
export const WebhookDeliveryList = z.object({ deliveries: z.array(WebhookDelivery).describe('the newest 50, newest first') });

export const FreezeList = z.object({ periods: z.array(FreezePeriod) });

export const OpenApiDocument = z.object({ openapi: z.string(), paths: z.record(z.string(), z.unknown()) }).loose();
