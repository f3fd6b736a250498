import { ConditionalCheckFailedException, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand, PutCommand, QueryCommand, TransactWriteCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { config } from './config.ts';
import { slotOf } from './maintenance-window.ts';
import {
  dueStatuses, FreezePeriod, Maintenance, Rollout, type MaintenanceChange, type MaintenanceKind, type MaintenanceStatus,
} from './maintenance-model.ts';

/**
 * Maintenance persistence, beside store.ts on the same table. Keys:
 *   DB#<id>/MAINT#<id> (an item; in gsi4 while waiting or running), MAINTENANCE/DURATIONS (past run times
 *   per kind), ACCOUNT#<id>/MAINT_FREEZES (an account's freeze periods), ROLLOUT#<id>/META (an operator's
 *   rollout and its waves), ROLLOUT#<id>/WAVE#<nn>#<database id> (which item a database has in which wave).
 */

const maintKey = (databaseId: string, id: string) => ({ pk: `DB#${databaseId}`, sk: `MAINT#${id}` });
const durationsKey = { pk: 'MAINTENANCE', sk: 'DURATIONS' };
const freezesKey = (accountId: string) => ({ pk: `ACCOUNT#${accountId}`, sk: 'MAINT_FREEZES' });
const rolloutKey = (id: string) => ({ pk: `ROLLOUT#${id}`, sk: 'META' });
const waveMemberPrefix = (wave: number) => `WAVE#${String(wave).padStart(2, '0')}#`;
/** Held items (`scheduled`: a wave not released) and finished ones are not due: only these are in the index. */
const indexed = (status: MaintenanceStatus) => (dueStatuses as readonly string[]).includes(status);

/** The dispatcher's index entry of an item planned in the window occurrence starting at `windowStart`. */
export const slotIndex = (item: Pick<Maintenance, 'id' | 'windowStart'>) => ({
  gsi4pk: `MW#${slotOf(new Date(item.windowStart))}`,
  gsi4sk: `${item.windowStart}#${item.id}`,
});

const keyAttributes = ['pk', 'sk', 'gsi4pk', 'gsi4sk'];
const toMaintenance = (item: Record<string, unknown>) => Maintenance.parse(Object.fromEntries(Object.entries(item).filter(([k]) => !keyAttributes.includes(k))));

/** How many past run times are kept per kind: enough for a p95. */
const keptDurations = 100;

/** An item as written to the table, with its index entry while it waits or runs. */
export function maintenanceItem(item: Maintenance) {
  return { ...maintKey(item.databaseId, item.id), ...(indexed(item.status) ? slotIndex(item) : {}), ...item };
}

export class MaintenanceStore {
  private readonly doc: DynamoDBDocumentClient;
  /** Read capacity consumed by queries so far (the benchmark reports the dispatcher's). */
  consumedReadUnits = 0;

  constructor(client = new DynamoDBClient({}), readonly table = config.tableName()) {
    this.doc = DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });
  }

  async get(databaseId: string, id: string): Promise<Maintenance | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: maintKey(databaseId, id), ConsistentRead: true }));
    return Item && toMaintenance(Item);
  }

  /** Newest first. */
  async list(databaseId: string): Promise<Maintenance[]> {
    const items = await this.queryAll({
      KeyConditionExpression: 'pk = :db AND begins_with(sk, :maint)',
      ExpressionAttributeValues: { ':db': `DB#${databaseId}`, ':maint': 'MAINT#' },
      ScanIndexForward: false,
    });
    return items.map(toMaintenance);
  }

  /** The items of one start slot whose window occurrence has started by `now` (waiting or running): nothing else is read. */
  async listDue(slot: string, now: Date): Promise<Maintenance[]> {
    const items = await this.queryAll({
      IndexName: 'gsi4',
      KeyConditionExpression: 'gsi4pk = :slot AND gsi4sk <= :now',
      // '~' sorts after every id character: items planned exactly at `now` are due.
      ExpressionAttributeValues: { ':slot': `MW#${slot}`, ':now': `${now.toISOString()}#~` },
    });
    return items.map(toMaintenance);
  }

  /**
   * Moves an item from one of `from` (and, with `attempts`, that many dispatches) to `changes.status`, recording
   * the change in its history; its index entry follows its status and window. Returns the new item, or undefined
   * when it was no longer in that state (another tick or request got there first).
   */
  async transition(
    item: Pick<Maintenance, 'id' | 'databaseId' | 'windowStart'>,
    expected: { from: readonly MaintenanceStatus[]; attempts?: number },
    changes: Partial<Omit<Maintenance, 'id' | 'databaseId' | 'history'>> & { status: MaintenanceStatus; updatedAt: string },
    change: Omit<MaintenanceChange, 'to' | 'at'>,
  ): Promise<Maintenance | undefined> {
    const names: Record<string, string> = { '#status': 'status', '#history': 'history' };
    const values: Record<string, unknown> = {
      ':entry': [{ at: changes.updatedAt, to: changes.status, ...change }],
      ...Object.fromEntries(expected.from.map((s, i) => [`:from${i}`, s])),
    };
    const set = ['#history = list_append(#history, :entry)'];
    const remove: string[] = [];
    for (const [i, [name, value]] of Object.entries(changes).entries()) {
      names[`#f${i}`] = name;
      if (value === undefined) remove.push(`#f${i}`);
      else { set.push(`#f${i} = :f${i}`); values[`:f${i}`] = value; }
    }
    if (indexed(changes.status)) {
      const index = slotIndex({ id: item.id, windowStart: changes.windowStart ?? item.windowStart });
      set.push('gsi4pk = :gsi4pk', 'gsi4sk = :gsi4sk');
      Object.assign(values, { ':gsi4pk': index.gsi4pk, ':gsi4sk': index.gsi4sk });
    } else {
      remove.push('gsi4pk', 'gsi4sk');
    }
    let condition = `#status IN (${expected.from.map((_, i) => `:from${i}`).join(', ')})`;
    if (expected.attempts !== undefined) {
      names['#attempts'] = 'attempts';
      values[':expectedAttempts'] = expected.attempts;
      condition += ' AND #attempts = :expectedAttempts';
    }
    try {
      const { Attributes } = await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: maintKey(item.databaseId, item.id),
        UpdateExpression: `SET ${set.join(', ')}${remove.length ? ` REMOVE ${remove.join(', ')}` : ''}`,
        ConditionExpression: `attribute_exists(pk) AND ${condition}`,
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
        ReturnValues: 'ALL_NEW',
      }));
      return toMaintenance(Attributes!);
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException) return undefined;
      throw error;
    }
  }

  /** Records the operation a running item started; once (a retried step finds it recorded). */
  async setOperation(item: Pick<Maintenance, 'id' | 'databaseId'>, operationId: string, at: string): Promise<void> {
    await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: maintKey(item.databaseId, item.id),
      UpdateExpression: 'SET operationId = :op, updatedAt = :at',
      ConditionExpression: '#status = :running AND attribute_not_exists(operationId)',
      ExpressionAttributeNames: { '#status': 'status' },
      ExpressionAttributeValues: { ':op': operationId, ':at': at, ':running': 'running' },
    })).catch((error: unknown) => {
      if (!(error instanceof ConditionalCheckFailedException)) throw error;
    });
  }

  // ---- run times per kind, for the expected duration (p95)

  async durations(): Promise<Partial<Record<MaintenanceKind, number[]>>> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: durationsKey }));
    return (Item?.byKind ?? {}) as Partial<Record<MaintenanceKind, number[]>>;
  }

  /**
   * Adds a run time (seconds) to its kind, keeping the newest `keptDurations`. Read-modify-write without a
   * condition: two runs ending at once may lose one sample, which moves a p95 over 100 samples by nothing that matters.
   */
  async recordDuration(kind: MaintenanceKind, seconds: number): Promise<void> {
    const byKind = await this.durations();
    byKind[kind] = [...(byKind[kind] ?? []), seconds].slice(-keptDurations);
    await this.doc.send(new PutCommand({ TableName: this.table, Item: { ...durationsKey, byKind } }));
  }

  // ---- freeze periods of an account

  async freezes(accountId: string): Promise<FreezePeriod[]> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: freezesKey(accountId) }));
    return FreezePeriod.array().parse(Item?.periods ?? []);
  }

  async setFreezes(accountId: string, periods: FreezePeriod[]): Promise<void> {
    await this.doc.send(new PutCommand({ TableName: this.table, Item: { ...freezesKey(accountId), periods } }));
  }

  // ---- rollouts

  async putRollout(rollout: Rollout): Promise<void> {
    await this.doc.send(new PutCommand({ TableName: this.table, Item: { ...rolloutKey(rollout.id), ...rollout }, ConditionExpression: 'attribute_not_exists(pk)' }));
  }

  async getRollout(id: string): Promise<Rollout | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: rolloutKey(id), ConsistentRead: true }));
    return Item && Rollout.parse(Item);
  }

  /**
   * Writes an item of a rollout's wave with its member entry, and counts it in the wave's size, in one transaction:
   * a wave's size is always the items it has, so a creation that stops midway leaves no wave that cannot finish.
   */
  async addWaveMember(rolloutId: string, wave: number, item: Maintenance): Promise<void> {
    await this.doc.send(new TransactWriteCommand({
      TransactItems: [
        { Put: { TableName: this.table, Item: maintenanceItem(item), ConditionExpression: 'attribute_not_exists(pk)' } },
        { Put: { TableName: this.table, Item: { pk: `ROLLOUT#${rolloutId}`, sk: `${waveMemberPrefix(wave)}${item.databaseId}`, databaseId: item.databaseId, maintenanceId: item.id } } },
        {
          Update: {
            TableName: this.table,
            Key: rolloutKey(rolloutId),
            UpdateExpression: `SET waves[${wave}].size = waves[${wave}].size + :one`,
            ConditionExpression: 'attribute_exists(pk)',
            ExpressionAttributeValues: { ':one': 1 },
          },
        },
      ],
    }));
  }

  async waveMembers(rolloutId: string, wave: number): Promise<{ databaseId: string; maintenanceId: string }[]> {
    const items = await this.queryAll({
      KeyConditionExpression: 'pk = :rollout AND begins_with(sk, :wave)',
      ExpressionAttributeValues: { ':rollout': `ROLLOUT#${rolloutId}`, ':wave': waveMemberPrefix(wave) },
    });
    return items.map((m) => ({ databaseId: String(m.databaseId), maintenanceId: String(m.maintenanceId) }));
  }

  /** Counts a finished item in its wave (atomically: items of a wave end concurrently). */
  async countWaveOutcome(rolloutId: string, wave: number, failed: boolean, at: string): Promise<Rollout> {
    const { Attributes } = await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: rolloutKey(rolloutId),
      UpdateExpression: `SET waves[${wave}].finished = waves[${wave}].finished + :one, waves[${wave}].failed = waves[${wave}].failed + :failed, updatedAt = :at`,
      ConditionExpression: 'attribute_exists(pk)',
      ExpressionAttributeValues: { ':one': 1, ':failed': failed ? 1 : 0, ':at': at },
      ReturnValues: 'ALL_NEW',
    }));
    return Rollout.parse(Attributes);
  }

  /** Moves a wave from `from` to `to` (and the rollout's status with it); false when another caller did it first. */
  async setWaveStatus(
    rolloutId: string, wave: number, from: Rollout['waves'][number]['status'], to: Rollout['waves'][number]['status'],
    rollout: Partial<Pick<Rollout, 'status' | 'reason'>> & { updatedAt: string },
  ): Promise<boolean> {
    const fields = Object.entries(rollout).filter(([, value]) => value !== undefined);
    try {
      await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: rolloutKey(rolloutId),
        UpdateExpression: `SET waves[${wave}].#status = :to${fields.map((_, i) => `, #r${i} = :r${i}`).join('')}`,
        ConditionExpression: `waves[${wave}].#status = :from`,
        ExpressionAttributeNames: { '#status': 'status', ...Object.fromEntries(fields.map(([name], i) => [`#r${i}`, name])) },
        ExpressionAttributeValues: { ':to': to, ':from': from, ...Object.fromEntries(fields.map(([, value], i) => [`:r${i}`, value])) },
      }));
      return true;
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException) return false;
      throw error;
    }
  }

  /** Every page of a query, counting the read capacity it consumed. */
  private async queryAll(input: Omit<ConstructorParameters<typeof QueryCommand>[0], 'TableName'>): Promise<Record<string, unknown>[]> {
    const items: Record<string, unknown>[] = [];
    let ExclusiveStartKey: Record<string, unknown> | undefined;
    do {
      const page = await this.doc.send(new QueryCommand({ ...input, TableName: this.table, ExclusiveStartKey, ReturnConsumedCapacity: 'TOTAL' }));
      this.consumedReadUnits += page.ConsumedCapacity?.CapacityUnits ?? 0;
      items.push(...(page.Items ?? []));
      ExclusiveStartKey = page.LastEvaluatedKey;
    } while (ExclusiveStartKey);
    return items;
  }
}

let shared: MaintenanceStore | undefined;
/** One per container (per Lambda); created lazily so modules load without configuration. */
export const getMaintenanceStore = () => (shared ??= new MaintenanceStore());
