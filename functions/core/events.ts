import { EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';
import { detailTypes, eventSource } from '../events/rules.ts';
import { config } from './config.ts';
import type { Maintenance } from './maintenance-model.ts';
import type { Database, Operation } from './model.ts';

/** Puts dbplane's events on the bus (EventBridge in AWS, the local bus in the runtime). */
export class EventPublisher {
  constructor(private readonly client = new EventBridgeClient({}), private readonly busName = config.eventBusName()) {}

  async operationFinished(operation: Operation): Promise<void> {
    await this.put(detailTypes.operationFinished, {
      databaseId: operation.databaseId,
      accountId: operation.accountId,
      operationId: operation.id,
      kind: operation.kind,
      status: operation.status,
      error: operation.error,
    });
  }

  /** A restore drill could not restore or read a backup: someone should look before that backup is needed. */
  async restoreDrillFailed(operation: Pick<Operation, 'id' | 'databaseId' | 'accountId' | 'input'>, reason: string): Promise<void> {
    await this.put(detailTypes.restoreDrillFailed, {
      databaseId: operation.databaseId, accountId: operation.accountId, operationId: operation.id, backupId: operation.input.drilledBackupId, reason,
    });
  }

  async databaseStatusChanged(database: Pick<Database, 'id' | 'accountId'>, from: string, to: string, operationId?: string): Promise<void> {
    await this.put(detailTypes.databaseStatusChanged, { databaseId: database.id, accountId: database.accountId, operationId, from, to });
  }

  /** Billing reads this: the plan of record changed at `at`, from `from` to `to`. */
  async planChanged(operation: Pick<Operation, 'id' | 'databaseId' | 'accountId'>, change: { from: string; to: string; at: string }): Promise<void> {
    await this.put(detailTypes.planChanged, { databaseId: operation.databaseId, accountId: operation.accountId, operationId: operation.id, ...change });
  }

  /** The engine version of record changed at `at`, from `from` to `to`. */
  async upgraded(operation: Pick<Operation, 'id' | 'databaseId' | 'accountId'>, change: { from: string; to: string; at: string }): Promise<void> {
    await this.put(detailTypes.upgraded, { databaseId: operation.databaseId, accountId: operation.accountId, operationId: operation.id, ...change });
  }

  /** The notice of an operator's maintenance: what will run, and in which window (at least 24 h ahead). */
  async maintenanceScheduled(item: Maintenance): Promise<void> {
    await this.put(detailTypes.maintenanceScheduled, {
      accountId: item.accountId, databaseId: item.databaseId, maintenanceId: item.id, kind: item.kind, target: item.target,
      windowStart: item.windowStart, windowEnd: item.windowEnd, deadline: item.deadline, rolloutId: item.rolloutId,
    });
  }

  async maintenanceStatusChanged(item: Maintenance, from: Maintenance['status']): Promise<void> {
    await this.put(detailTypes.maintenanceStatusChanged, {
      accountId: item.accountId, databaseId: item.databaseId, maintenanceId: item.id, kind: item.kind, from, to: item.status,
      reason: item.reason, windowStart: item.windowStart, operationId: item.operationId, rolloutId: item.rolloutId,
    });
  }

  async maintenanceWaveHalted(item: Maintenance, wave: { wave: number; failed: number; size: number; threshold: number }): Promise<void> {
    await this.put(detailTypes.maintenanceWaveHalted, {
      accountId: item.accountId, databaseId: item.databaseId, maintenanceId: item.id, rolloutId: item.rolloutId, reason: item.reason, ...wave,
    });
  }

  private async put(detailType: string, detail: Record<string, unknown>): Promise<void> {
    const result = await this.client.send(new PutEventsCommand({
      Entries: [{ EventBusName: this.busName, Source: eventSource, DetailType: detailType, Detail: JSON.stringify(detail) }],
    }));
    if (result.FailedEntryCount) throw new Error(`event ${detailType} was not accepted: ${result.Entries?.[0]?.ErrorMessage}`);
  }
}
