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
];
