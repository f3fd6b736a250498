/**
 * Event rules on the dbplane bus: EventBridge rules in CDK, in-process delivery in the local runtime.
 * A pattern matches when every listed field of the event has one of the listed values.
 */
export const eventSource = 'dbplane';

export const detailTypes = {
  operationFinished: 'dbplane.operation.finished',
  databaseStatusChanged: 'dbplane.database.status-changed',
  restoreDrillFailed: 'dbplane.restore-drill.failed',
  /** Billing-relevant: a plan change succeeded (`from`, `to`, `at`). */
  planChanged: 'dbplane.database.plan-changed',
  /** An upgrade succeeded: the engine version of record changed (`from`, `to`, `at`). */
  upgraded: 'dbplane.database.upgraded',
  /** The notice of an operator's maintenance, at least 24 h before its window (`accountId`, `databaseId`, `maintenanceId`, window, kind). */
  maintenanceScheduled: 'dbplane.maintenance.scheduled',
  /** A maintenance item changed status or window (`from`, `to`, `reason`, window). */
  maintenanceStatusChanged: 'dbplane.maintenance.status-changed',
  /** A rollout's wave failed above its threshold: this database's maintenance of a later wave is cancelled (`wave`, `failed`, `size`, `threshold`). */
  maintenanceWaveHalted: 'dbplane.maintenance.wave-halted',
} as const;

export interface EventRule {
  readonly id: string;
  readonly pattern: { readonly source: readonly string[]; readonly 'detail-type': readonly string[] };
  readonly entry: string;
  readonly handler: string;
}

export const eventRules: readonly EventRule[] = [
  {
    id: 'AuditTrail',
    pattern: { source: [eventSource], 'detail-type': Object.values(detailTypes) },
    entry: 'functions/events/audit-trail.ts',
    handler: 'handler',
  },
  {
    id: 'BackupAfterChange',
    pattern: { source: [eventSource], 'detail-type': [detailTypes.operationFinished] },
    entry: 'functions/events/backup-after-change.ts',
    handler: 'handler',
  },
  {
    id: 'WebhookDelivery',
    pattern: { source: [eventSource], 'detail-type': Object.values(detailTypes) },
    entry: 'functions/events/webhook-delivery.ts',
    handler: 'handler',
  },
];
