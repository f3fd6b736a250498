/**
 * The schedules: EventBridge rules in CDK, timers in the local runtime. Expressions use EventBridge
 * syntax; the local runtime supports `rate(N minute|minutes|hour|hours)`.
 */
export interface Schedule {
  readonly id: string;
  readonly expression: string;
  readonly entry: string;
  readonly handler: string;
  readonly description: string;
}

export const schedules: readonly Schedule[] = [
  {
    id: 'OperationReaper',
    expression: 'rate(1 minute)',
    entry: 'functions/schedules/operation-reaper.ts',
    handler: 'handler',
    description: 'ends operations whose execution is gone (failed and cleaned up), so no lock is held forever',
  },
  {
    id: 'HostInventory',
    expression: 'rate(5 minutes)',
    entry: 'functions/schedules/host-inventory.ts',
    handler: 'handler',
    description: "records each host's versions and capabilities, which GET /engines offers",
  },
  {
    id: 'BackupScheduler',
    expression: 'rate(15 minutes)',
    entry: 'functions/schedules/backup-scheduler.ts',
    handler: 'handler',
    description: 'starts the daily backup of the databases whose backup hour it is (index by hour, no scan); a busy database is tried again on the next tick',
  },
  {
    id: 'BackupPruner',
    expression: 'rate(1 hour)',
    entry: 'functions/schedules/backup-pruner.ts',
    handler: 'handler',
    description: "removes backups that fell out of retention, in every copy, for this hour's databases; shreds a deleted database's key once nothing is left",
  },
  {
    id: 'RestoreDrill',
    expression: 'rate(1 hour)',
    entry: 'functions/schedules/restore-drill.ts',
    handler: 'handler',
    description: "restores the newest backup of a sample of this hour's databases (each once a week) into a scratch server, checks it, records the time it took; a failure is an event",
  },
  {
    id: 'MaintenanceDispatcher',
    expression: 'rate(5 minutes)',
    entry: 'functions/schedules/maintenance-dispatcher.ts',
    handler: 'handler',
    description: 'starts the maintenance due in the windows open now (sparse index by window slot, no scan) if it fits in what is left; a busy database is tried on the next tick',
  },
  {
    id: 'WebhookRetries',
    expression: 'rate(1 minute)',
    entry: 'functions/events/webhook-delivery.ts',
    handler: 'retry',
    description: 'attempts again the webhook deliveries that are due (sparse index by due time, no scan), with exponential backoff, up to 5 attempts',
  },
];
