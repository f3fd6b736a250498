import { ConditionalCheckFailedException, DynamoDBClient, TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import {
  DeleteCommand, DynamoDBDocumentClient, GetCommand, PutCommand, QueryCommand, TransactWriteCommand, UpdateCommand,
} from '@aws-sdk/lib-dynamodb';
import type { HostInfo } from './agent-api.ts';
import { config } from './config.ts';
import { Conflict, OperationInProgress } from './errors.ts';
import { newMaintenance } from './maintenance-model.ts';
import { maintenanceItem } from './maintenance-store.ts';
import {
  Account, AuditEvent, Backup, DataKey, Database, type DatabaseStatus, Operation, type OperationStatus, type OperationStep, TokenRecord,
} from './model.ts';

/**
 * All access to the single table. Keys (see table.ts):
 *   DB#<id>/META, DB#<id>/OP#<id>, DB#<id>/EVT#<id>, NAME#<account>#<name>/META, ACCOUNT#<id>/META,
 *   DB#<id>/BACKUP#<id>, DB#<id>/KEY#<n>, TOKEN#<sha256>/META, IDEM#<account>#<key>/META, HOSTS/HOST#<id>.
 * Conditional-write failures become domain errors here, at the boundary.
 */

const dbKey = (id: string) => ({ pk: `DB#${id}`, sk: 'META' });
const nameKey = (accountId: string, name: string) => ({ pk: `NAME#${accountId}#${name}`, sk: 'META' });
const opKey = (databaseId: string, id: string) => ({ pk: `DB#${databaseId}`, sk: `OP#${id}` });
/** A tag's index item: the databases carrying a tag are one query on its partition. */
const tagKey = (tag: string, databaseId: string) => ({ pk: `TAG#${tag}`, sk: `DB#${databaseId}` });
const tagItem = (tag: string, databaseId: string) => ({ ...tagKey(tag, databaseId), databaseId });
const backupKey = (databaseId: string, id: string) => ({ pk: `DB#${databaseId}`, sk: `BACKUP#${id}` });
const dataKeyKey = (databaseId: string, version: number) => ({ pk: `DB#${databaseId}`, sk: `KEY#${version}` });
/** The backup-hour index entry of a database (see table.ts, gsi3). */
const backupHourIndex = (database: Pick<Database, 'id' | 'backupHour'>) => ({
  gsi3pk: `BACKUP_HOUR#${String(database.backupHour).padStart(2, '0')}`,
  gsi3sk: `DB#${database.id}`,
});

const keyAttributes = ['pk', 'sk', 'gsi1pk', 'gsi1sk', 'gsi2pk', 'gsi2sk', 'gsi3pk', 'gsi3sk', 'expiresAt'];
function strip<T>(item: Record<string, unknown>): T {
  return Object.fromEntries(Object.entries(item).filter(([k]) => !keyAttributes.includes(k))) as T;
}

/** Steps are kept as a map by name (so a retried step updates its entry) and shown as a list in start order. */
function toOperation(item: Record<string, unknown>): Operation {
  const steps = Object.values((item.steps ?? {}) as Record<string, OperationStep>)
    .sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  return Operation.parse({ ...strip<Record<string, unknown>>(item), steps });
}

function cancellationReasons(error: unknown): (string | undefined)[] | undefined {
  return error instanceof TransactionCanceledException ? error.CancellationReasons?.map((r) => r.Code) : undefined;
}

type TransactItems = NonNullable<ConstructorParameters<typeof TransactWriteCommand>[0]['TransactItems']>;

export interface IdempotencyRecord {
  requestHash: string;
  status: 'in_progress' | 'completed';
  response?: { statusCode: number; headers: Record<string, string>; body: string };
  expiresAt: number;
}

export class Store {
  private readonly doc: DynamoDBDocumentClient;

  constructor(client = new DynamoDBClient({}), readonly table = config.tableName()) {
    this.doc = DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });
  }

  // ---- accounts and tokens

  async putAccount(account: Account): Promise<void> {
    await this.doc.send(new PutCommand({ TableName: this.table, Item: { pk: `ACCOUNT#${account.id}`, sk: 'META', ...account } }));
  }

  async getAccount(id: string): Promise<Account | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: `ACCOUNT#${id}`, sk: 'META' } }));
    return Item && Account.parse(strip(Item));
  }

  async putToken(tokenHash: string, token: TokenRecord): Promise<void> {
    await this.doc.send(new PutCommand({
      TableName: this.table,
      Item: { pk: `TOKEN#${tokenHash}`, sk: 'META', ...token },
      ConditionExpression: 'attribute_not_exists(pk)',
    }));
  }

  async getToken(tokenHash: string): Promise<TokenRecord | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: `TOKEN#${tokenHash}`, sk: 'META' } }));
    return Item && TokenRecord.parse(strip(Item));
  }

  // ---- databases

  /** Writes the new database, its name claim and its provisioning operation (which holds the lock) at once. */
  async createDatabase(database: Database, operation: Operation): Promise<void> {
    try {
      await this.doc.send(new TransactWriteCommand({
        TransactItems: [
          { Put: { TableName: this.table, Item: { ...dbKey(database.id), gsi1pk: `OWNER#${database.accountId}`, gsi1sk: `DB#${database.name}`, ...backupHourIndex(database), ...database }, ConditionExpression: 'attribute_not_exists(pk)' } },
          { Put: { TableName: this.table, Item: { ...nameKey(database.accountId, database.name), databaseId: database.id }, ConditionExpression: 'attribute_not_exists(pk)' } },
          { Put: { TableName: this.table, Item: this.operationItem(operation) } },
          ...(database.tags ?? []).map((tag) => ({ Put: { TableName: this.table, Item: tagItem(tag, database.id) } })),
        ],
      }));
    } catch (error) {
      if (cancellationReasons(error)?.[1] === 'ConditionalCheckFailed') {
        throw new Conflict(`a database named "${database.name}" already exists`, { errors: [{ pointer: '/body/name', detail: 'already taken' }] });
      }
      throw error;
    }
  }

  async getDatabase(id: string): Promise<Database | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: dbKey(id), ConsistentRead: true }));
    return Item && Database.parse(strip(Item));
  }

  async findDatabaseIdByName(accountId: string, name: string): Promise<string | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: nameKey(accountId, name) }));
    return Item?.databaseId as string | undefined;
  }

  async listDatabases(accountId: string): Promise<Database[]> {
    const items = await this.queryAll({
      IndexName: 'gsi1',
      KeyConditionExpression: 'gsi1pk = :owner AND begins_with(gsi1sk, :db)',
      ExpressionAttributeValues: { ':owner': `OWNER#${accountId}`, ':db': 'DB#' },
    });
    return items.map((item) => Database.parse(strip(item)));
  }

  /**
   * Takes the database's lock for a new operation and records the operation, in one transaction.
   * Fails with 409 naming the operation in progress, or with 409 when the status does not allow it.
   */
  async startOperation(
    operation: Operation,
    allowedStatuses: DatabaseStatus[],
    newStatus: DatabaseStatus,
    options: { scheduledBackupDate?: string; extraItems?: TransactItems } = {},
  ): Promise<void> {
    const statusValues = Object.fromEntries(allowedStatuses.map((s, i) => [`:allowed${i}`, s]));
    // A scheduled backup also claims its day, so a second tick (or a retried one) starts nothing.
    const { scheduledBackupDate: day } = options;
    const daySet = day ? ', lastScheduledBackup = :day' : '';
    const dayCondition = day ? ' AND (attribute_not_exists(lastScheduledBackup) OR lastScheduledBackup <> :day)' : '';
    try {
      await this.doc.send(new TransactWriteCommand({
        TransactItems: [
          {
            Update: {
              TableName: this.table,
              Key: dbKey(operation.databaseId),
              UpdateExpression: `SET activeOperation = :op, #status = :status, updatedAt = :now, rev = rev + :one${daySet} REMOVE statusReason`,
              ConditionExpression: `attribute_exists(pk) AND attribute_not_exists(activeOperation) AND #status IN (${Object.keys(statusValues).join(', ')})${dayCondition}`,
              ExpressionAttributeNames: { '#status': 'status' },
              ExpressionAttributeValues: { ':op': operation.id, ':status': newStatus, ':now': operation.createdAt, ':one': 1, ...statusValues, ...(day ? { ':day': day } : {}) },
            },
          },
          { Put: { TableName: this.table, Item: this.operationItem(operation) } },
          ...(options.extraItems ?? []),
        ],
      }));
    } catch (error) {
      if (cancellationReasons(error)?.[0] !== 'ConditionalCheckFailed') throw error;
      const current = await this.getDatabase(operation.databaseId);
      if (current?.activeOperation) throw new OperationInProgress(current.activeOperation);
      if (day && current?.lastScheduledBackup === day) throw new Conflict(`the scheduled backup of ${day} has already started`);
      throw new Conflict(`the database is ${current?.status ?? 'gone'}; this operation needs it ${allowedStatuses.join(' or ')}`);
    }
  }

  /**
   * Ends an operation and releases the database's lock, applying `changes` to the database.
   * Safe to repeat: once the lock is released by this operation, a second call changes nothing.
   */
  async finishOperation(
    operation: Pick<Operation, 'id' | 'databaseId'>,
    outcome: { status: OperationStatus; error?: string; at: string },
    changes: {
      status: DatabaseStatus;
      statusReason?: string;
      endpoint?: Database['endpoint'];
      /** A plan change that succeeded: the new plan of record. */
      plan?: string;
      /** An upgrade that succeeded: the new version of record. */
      version?: string;
      /** Its name and tag index items go with it. */
      deleted?: { accountId: string; name: string; tags?: string[] };
      /** With `deleted`: the backups and data key were destroyed, so the pruner has nothing left to visit. */
      purged?: boolean;
    },
    /** More writes that must happen with the outcome (e.g. the backup record's result). */
    extraItems: TransactItems = [],
  ): Promise<boolean> {
    const set = ['#status = :dbStatus', 'updatedAt = :at', 'rev = rev + :one'];
    const remove = ['activeOperation'];
    const values: Record<string, unknown> = { ':op': operation.id, ':dbStatus': changes.status, ':at': outcome.at, ':one': 1 };
    if (changes.statusReason) { set.push('statusReason = :reason'); values[':reason'] = changes.statusReason; } else remove.push('statusReason');
    if (changes.endpoint) { set.push('endpoint = :endpoint'); values[':endpoint'] = changes.endpoint; }
    if (changes.plan) { set.push('#plan = :plan'); values[':plan'] = changes.plan; }
    if (changes.version) { set.push('#version = :version'); values[':version'] = changes.version; }
    if (changes.deleted) remove.push('gsi1pk', 'gsi1sk', 'endpoint');
    if (changes.purged) remove.push('gsi3pk', 'gsi3sk', 'dataKeyVersion');
    const items: TransactItems = [
      {
        Update: {
          TableName: this.table,
          Key: dbKey(operation.databaseId),
          UpdateExpression: `SET ${set.join(', ')} REMOVE ${remove.join(', ')}`,
          ConditionExpression: 'activeOperation = :op',
          ExpressionAttributeNames: { '#status': 'status', ...(changes.plan ? { '#plan': 'plan' } : {}), ...(changes.version ? { '#version': 'version' } : {}) },
          ExpressionAttributeValues: values,
        },
      },
      {
        Update: {
          TableName: this.table,
          Key: opKey(operation.databaseId, operation.id),
          UpdateExpression: 'SET #status = :status, finishedAt = :at, updatedAt = :at' + (outcome.error ? ', #error = :error' : '') + ' REMOVE gsi2pk, gsi2sk',
          ExpressionAttributeNames: { '#status': 'status', ...(outcome.error ? { '#error': 'error' } : {}) },
          ExpressionAttributeValues: { ':status': outcome.status, ':at': outcome.at, ...(outcome.error ? { ':error': outcome.error } : {}) },
        },
      },
    ];
    if (changes.deleted) {
      items.push({
        Delete: {
          TableName: this.table,
          Key: nameKey(changes.deleted.accountId, changes.deleted.name),
          ConditionExpression: 'attribute_not_exists(pk) OR databaseId = :id',
          ExpressionAttributeValues: { ':id': operation.databaseId },
        },
      });
      items.push(...(changes.deleted.tags ?? []).map((tag) => ({ Delete: { TableName: this.table, Key: tagKey(tag, operation.databaseId) } })));
    }
    items.push(...extraItems);
    try {
      await this.doc.send(new TransactWriteCommand({ TransactItems: items }));
      return true;
    } catch (error) {
      if (cancellationReasons(error)?.[0] === 'ConditionalCheckFailed') return false;
      throw error;
    }
  }

  // ---- operations

  /** Records an operation that takes no lock (a restore drill reads backups; the database is not touched). */
  async putUnlockedOperation(operation: Operation): Promise<void> {
    await this.doc.send(new PutCommand({ TableName: this.table, Item: this.operationItem(operation), ConditionExpression: 'attribute_not_exists(pk)' }));
  }

  /** Ends an operation that took no lock; once only (a retry finds it finished and changes nothing). */
  async finishUnlockedOperation(
    operation: Pick<Operation, 'id' | 'databaseId'>,
    outcome: { status: OperationStatus; error?: string; at: string },
  ): Promise<boolean> {
    try {
      await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: opKey(operation.databaseId, operation.id),
        UpdateExpression: `SET #status = :status, finishedAt = :at, updatedAt = :at${outcome.error ? ', #error = :error' : ''} REMOVE gsi2pk, gsi2sk`,
        ConditionExpression: 'attribute_exists(pk) AND attribute_not_exists(finishedAt)',
        ExpressionAttributeNames: { '#status': 'status', ...(outcome.error ? { '#error': 'error' } : {}) },
        ExpressionAttributeValues: { ':status': outcome.status, ':at': outcome.at, ...(outcome.error ? { ':error': outcome.error } : {}) },
      }));
      return true;
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException) return false;
      throw error;
    }
  }

  /** Records what an operation found, before it ends. */
  async setOperationResult(operation: Pick<Operation, 'id' | 'databaseId'>, result: Record<string, unknown>): Promise<void> {
    await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: opKey(operation.databaseId, operation.id),
      UpdateExpression: 'SET #result = :result',
      ExpressionAttributeNames: { '#result': 'result' },
      ExpressionAttributeValues: { ':result': result },
    }));
  }

  private operationItem(operation: Operation) {
    const { steps, ...rest } = operation;
    return {
      ...opKey(operation.databaseId, operation.id),
      gsi1pk: `OP#${operation.id}`,
      gsi1sk: 'OP',
      gsi2pk: 'ACTIVE',
      gsi2sk: operation.createdAt,
      ...rest,
      steps: Object.fromEntries(steps.map((s) => [s.name, s])),
    };
  }

  async getOperation(id: string): Promise<Operation | undefined> {
    const { Items } = await this.doc.send(new QueryCommand({
      TableName: this.table,
      IndexName: 'gsi1',
      KeyConditionExpression: 'gsi1pk = :op',
      ExpressionAttributeValues: { ':op': `OP#${id}` },
    }));
    if (!Items?.[0]) return undefined;
    // The index is eventually consistent; read the item itself for the latest state.
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: Items[0].pk, sk: Items[0].sk }, ConsistentRead: true }));
    return Item && toOperation(Item);
  }

  async getDatabaseOperation(databaseId: string, id: string): Promise<Operation | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: opKey(databaseId, id), ConsistentRead: true }));
    return Item && toOperation(Item);
  }

  async listOperations(databaseId: string): Promise<Operation[]> {
    const items = await this.queryAll({
      KeyConditionExpression: 'pk = :db AND begins_with(sk, :op)',
      ExpressionAttributeValues: { ':db': `DB#${databaseId}`, ':op': 'OP#' },
      ScanIndexForward: false,
    });
    return items.map(toOperation);
  }

  /** Unfinished operations, oldest first, from the sparse index. */
  async listActiveOperations(startedBefore: string): Promise<Pick<Operation, 'id' | 'databaseId'>[]> {
    const items = await this.queryAll({
      IndexName: 'gsi2',
      KeyConditionExpression: 'gsi2pk = :active AND gsi2sk < :before',
      ExpressionAttributeValues: { ':active': 'ACTIVE', ':before': startedBefore },
    });
    return items.map((item) => ({ id: item.id as string, databaseId: item.databaseId as string }));
  }

  async setOperationFields(operation: Pick<Operation, 'id' | 'databaseId'>, fields: Partial<Pick<Operation, 'status' | 'executionArn' | 'updatedAt'>>): Promise<void> {
    const names = Object.keys(fields);
    await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: opKey(operation.databaseId, operation.id),
      UpdateExpression: `SET ${names.map((n, i) => `#f${i} = :v${i}`).join(', ')}`,
      ExpressionAttributeNames: Object.fromEntries(names.map((n, i) => [`#f${i}`, n])),
      ExpressionAttributeValues: Object.fromEntries(names.map((n, i) => [`:v${i}`, fields[n as keyof typeof fields]])),
    }));
  }

  /** Records a step starting; a retried step keeps its entry and counts the attempt. */
  async stepStarted(operation: Pick<Operation, 'id' | 'databaseId'>, name: string, at: string): Promise<void> {
    const key = opKey(operation.databaseId, operation.id);
    try {
      await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: key,
        UpdateExpression: 'SET steps.#name = :step, updatedAt = :at',
        ConditionExpression: 'attribute_not_exists(steps.#name)',
        ExpressionAttributeNames: { '#name': name },
        ExpressionAttributeValues: { ':step': { name, status: 'running', startedAt: at, attempts: 1 }, ':at': at },
      }));
    } catch (error) {
      if (!(error instanceof ConditionalCheckFailedException)) throw error;
      await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: key,
        UpdateExpression: 'SET steps.#name.#status = :running, steps.#name.attempts = steps.#name.attempts + :one, updatedAt = :at REMOVE steps.#name.finishedAt',
        ExpressionAttributeNames: { '#name': name, '#status': 'status' },
        ExpressionAttributeValues: { ':running': 'running', ':one': 1, ':at': at },
      }));
    }
  }

  async stepEnded(operation: Pick<Operation, 'id' | 'databaseId'>, name: string, status: 'succeeded' | 'failed' | 'running', at: string, detail?: string): Promise<void> {
    await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: opKey(operation.databaseId, operation.id),
      UpdateExpression: `SET steps.#name.#status = :status, updatedAt = :at${status === 'running' ? '' : ', steps.#name.finishedAt = :at'}${detail ? ', steps.#name.detail = :detail' : ''}`,
      ExpressionAttributeNames: { '#name': name, '#status': 'status' },
      ExpressionAttributeValues: { ':status': status, ':at': at, ...(detail ? { ':detail': detail } : {}) },
    }));
  }

  // ---- backup schedule

  /** Databases whose daily backup is at this UTC hour, from the sparse index (includes deleted ones that still have backups). */
  async listDatabasesByBackupHour(hour: number): Promise<Database[]> {
    const items = await this.queryAll({
      IndexName: 'gsi3',
      KeyConditionExpression: 'gsi3pk = :hour',
      ExpressionAttributeValues: { ':hour': backupHourIndex({ id: '', backupHour: hour }).gsi3pk },
    });
    // The index holds every attribute, but may lag: read each database itself for its current state.
    const databases = await Promise.all(items.map((item) => this.getDatabase(String(item.id))));
    return databases.filter((d): d is Database => d !== undefined);
  }

  async setBackupSchedule(database: Database, schedule: Pick<Database, 'backupHour' | 'backupRetention'>): Promise<Database> {
    const { Attributes } = await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: dbKey(database.id),
      UpdateExpression: 'SET backupHour = :hour, backupRetention = :retention, gsi3pk = :gsi3pk, gsi3sk = :gsi3sk, rev = rev + :one',
      ConditionExpression: 'attribute_exists(pk)',
      ExpressionAttributeValues: {
        ':hour': schedule.backupHour, ':retention': schedule.backupRetention ?? {}, ':one': 1,
        ...Object.fromEntries(Object.entries(backupHourIndex({ id: database.id, backupHour: schedule.backupHour })).map(([k, v]) => [`:${k}`, v])),
      },
      ReturnValues: 'ALL_NEW',
    }));
    return Database.parse(strip(Attributes!));
  }

  /**
   * Records a change queued for the maintenance window (a plan change or an upgrade) on a running database,
   * with the maintenance item that runs it in the database's window. A newer request replaces an older one
   * and keeps its item, which reads the change of record when it starts.
   */
  async setPendingChange(databaseId: string, pending: Pick<Database, 'pendingPlanChange'> | Pick<Database, 'pendingUpgrade'>): Promise<Database> {
    const [[name, value]] = Object.entries(pending) as [['pendingPlanChange' | 'pendingUpgrade', { requestedAt: string }]];
    const database = await this.getDatabase(databaseId);
    const queued = database?.[name]?.maintenanceId;
    const item = database && !queued
      ? newMaintenance(database, { kind: name === 'pendingUpgrade' ? 'upgrade' : 'change_plan', source: 'customer', target: {}, status: 'queued' }, new Date(value.requestedAt))
      : undefined;
    try {
      await this.doc.send(new TransactWriteCommand({
        TransactItems: [
          {
            Update: {
              TableName: this.table,
              Key: dbKey(databaseId),
              UpdateExpression: 'SET #pending = :pending, updatedAt = :at, rev = rev + :one',
              // The item read above is still the one queued: two requests at once create one item, not two.
              ConditionExpression: `attribute_exists(pk) AND #status = :running AND ${queued ? '#pending.maintenanceId = :queued' : 'attribute_not_exists(#pending.maintenanceId)'}`,
              ExpressionAttributeNames: { '#status': 'status', '#pending': name },
              ExpressionAttributeValues: {
                ':pending': { ...value, maintenanceId: queued ?? item?.id }, ':at': value.requestedAt, ':one': 1, ':running': 'running', ...(queued ? { ':queued': queued } : {}),
              },
            },
          },
          ...(item ? [{ Put: { TableName: this.table, Item: maintenanceItem(item), ConditionExpression: 'attribute_not_exists(pk)' } }] : []),
        ],
      }));
    } catch (error) {
      if (cancellationReasons(error)?.[0] !== 'ConditionalCheckFailed') throw error;
      const status = (await this.getDatabase(databaseId))?.status;
      if (status === 'running') throw new Conflict('another request changed the queued change meanwhile; retry');
      throw new Conflict(`the database is ${status ?? 'gone'}; a queued change needs it running`);
    }
    return (await this.getDatabase(databaseId))!;
  }

  /** Forgets a queued change once the maintenance item that ran it (or gave up) has finished; only that item's. */
  async clearPendingChange(databaseId: string, name: 'pendingPlanChange' | 'pendingUpgrade', maintenanceId: string): Promise<void> {
    try {
      await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: dbKey(databaseId),
        UpdateExpression: 'REMOVE #pending SET rev = rev + :one',
        ConditionExpression: '#pending.maintenanceId = :id',
        ExpressionAttributeNames: { '#pending': name },
        ExpressionAttributeValues: { ':id': maintenanceId, ':one': 1 },
      }));
    } catch (error) {
      if (!(error instanceof ConditionalCheckFailedException)) throw error;
    }
  }

  /**
   * Replaces a database's tags, with their index items (TAG#<tag> / DB#<id>: one small item per tag, written in the
   * same transaction), so a tag's databases are one query away. Conditional on the record not having changed since
   * it was read (409 otherwise).
   */
  async setTags(database: Pick<Database, 'id' | 'rev' | 'tags'>, tags: string[]): Promise<Database> {
    const before = new Set(database.tags ?? []);
    const after = new Set(tags);
    try {
      await this.doc.send(new TransactWriteCommand({
        TransactItems: [
          {
            Update: {
              TableName: this.table,
              Key: dbKey(database.id),
              UpdateExpression: 'SET tags = :tags, rev = rev + :one',
              ConditionExpression: 'attribute_exists(pk) AND rev = :rev',
              ExpressionAttributeValues: { ':tags': tags, ':one': 1, ':rev': database.rev },
            },
          },
          ...tags.filter((t) => !before.has(t)).map((tag) => ({ Put: { TableName: this.table, Item: tagItem(tag, database.id) } })),
          ...[...before].filter((t) => !after.has(t)).map((tag) => ({ Delete: { TableName: this.table, Key: tagKey(tag, database.id) } })),
        ],
      }));
    } catch (error) {
      if (cancellationReasons(error)?.[0] === 'ConditionalCheckFailed') throw new Conflict('the database changed meanwhile; read it again and retry');
      throw error;
    }
    return (await this.getDatabase(database.id))!;
  }

  /** The ids of the databases carrying `tag` (their index items, removed with the tag or the database). */
  async databaseIdsByTag(tag: string): Promise<string[]> {
    const items = await this.queryAll({
      KeyConditionExpression: 'pk = :tag',
      ExpressionAttributeValues: { ':tag': tagKey(tag, '').pk },
    });
    return items.map((item) => String(item.databaseId));
  }

  async setMaintenanceWindow(databaseId: string, window: NonNullable<Database['maintenanceWindow']>): Promise<void> {
    await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: dbKey(databaseId),
      UpdateExpression: 'SET maintenanceWindow = :window, rev = rev + :one',
      ConditionExpression: 'attribute_exists(pk)',
      ExpressionAttributeValues: { ':window': window, ':one': 1 },
    }));
  }

  /** Removes a deleted database from the pruner's index once nothing of it is left. */
  async forgetBackupHour(databaseId: string): Promise<void> {
    await this.doc.send(new UpdateCommand({ TableName: this.table, Key: dbKey(databaseId), UpdateExpression: 'REMOVE gsi3pk, gsi3sk' }));
  }

  // ---- data keys

  /**
   * Records a database's data key (wrapped) and makes it the one in use. Safe to repeat: when this
   * version exists already, the stored key wins and is returned.
   */
  async putDataKey(key: DataKey): Promise<DataKey> {
    try {
      await this.doc.send(new TransactWriteCommand({
        TransactItems: [
          { Put: { TableName: this.table, Item: { ...dataKeyKey(key.databaseId, key.version), ...key }, ConditionExpression: 'attribute_not_exists(pk)' } },
          { Update: { TableName: this.table, Key: dbKey(key.databaseId), UpdateExpression: 'SET dataKeyVersion = :v', ConditionExpression: 'attribute_exists(pk)', ExpressionAttributeValues: { ':v': key.version } } },
        ],
      }));
      return key;
    } catch (error) {
      if (cancellationReasons(error)?.[0] !== 'ConditionalCheckFailed') throw error;
      const existing = await this.getDataKey(key.databaseId, key.version);
      if (!existing) throw error;
      return existing;
    }
  }

  async getDataKey(databaseId: string, version: number): Promise<DataKey | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: dataKeyKey(databaseId, version), ConsistentRead: true }));
    return Item && DataKey.parse(strip(Item));
  }

  /** Crypto-shredding: once the wrapped keys are gone, no copy of the database's backups can be decrypted. */
  async deleteDataKeys(databaseId: string): Promise<void> {
    const items = await this.queryAll({
      KeyConditionExpression: 'pk = :db AND begins_with(sk, :key)',
      ExpressionAttributeValues: { ':db': `DB#${databaseId}`, ':key': 'KEY#' },
      ProjectionExpression: 'pk, sk',
    });
    await Promise.all(items.map((item) => this.doc.send(new DeleteCommand({ TableName: this.table, Key: { pk: item.pk, sk: item.sk } }))));
  }

  // ---- backups

  backupItem(backup: Backup) {
    return { ...backupKey(backup.databaseId, backup.id), ...backup };
  }

  async putBackup(backup: Backup): Promise<void> {
    await this.doc.send(new PutCommand({ TableName: this.table, Item: this.backupItem(backup) }));
  }

  async getBackup(databaseId: string, id: string): Promise<Backup | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: backupKey(databaseId, id), ConsistentRead: true }));
    return Item && Backup.parse(strip(Item));
  }

  /** Newest first. */
  async listBackups(databaseId: string): Promise<Backup[]> {
    const items = await this.queryAll({
      KeyConditionExpression: 'pk = :db AND begins_with(sk, :backup)',
      ExpressionAttributeValues: { ':db': `DB#${databaseId}`, ':backup': 'BACKUP#' },
      ScanIndexForward: false,
    });
    return items.map((item) => Backup.parse(strip(item)));
  }

  async deleteBackup(databaseId: string, id: string): Promise<void> {
    await this.doc.send(new DeleteCommand({ TableName: this.table, Key: backupKey(databaseId, id) }));
  }

  // ---- audit events

  async putEvent(event: AuditEvent): Promise<void> {
    await this.doc.send(new PutCommand({ TableName: this.table, Item: { pk: `DB#${event.databaseId}`, sk: `EVT#${event.id}`, ...event } }));
  }

  async listEvents(databaseId: string): Promise<AuditEvent[]> {
    const items = await this.queryAll({
      KeyConditionExpression: 'pk = :db AND begins_with(sk, :evt)',
      ExpressionAttributeValues: { ':db': `DB#${databaseId}`, ':evt': 'EVT#' },
      ScanIndexForward: false,
    });
    return items.map((item) => AuditEvent.parse(strip(item)));
  }

  // ---- hosts

  async putHost(host: HostInfo, at: string): Promise<void> {
    await this.doc.send(new PutCommand({ TableName: this.table, Item: { pk: 'HOSTS', sk: `HOST#${host.hostId}`, ...host, seenAt: at } }));
  }

  async listHosts(): Promise<HostInfo[]> {
    const items = await this.queryAll({ KeyConditionExpression: 'pk = :hosts', ExpressionAttributeValues: { ':hosts': 'HOSTS' } });
    return items.map((item) => strip<HostInfo & { seenAt: string }>(item));
  }

  // ---- idempotency

  /** Claims an idempotency key; returns the existing record when the key is already taken and not expired. */
  async claimIdempotencyKey(accountId: string, key: string, record: IdempotencyRecord, now: number): Promise<IdempotencyRecord | undefined> {
    try {
      await this.doc.send(new PutCommand({
        TableName: this.table,
        Item: { pk: `IDEM#${accountId}#${key}`, sk: 'META', ...record },
        // TTL deletion is lazy: an expired record still there counts as absent.
        ConditionExpression: 'attribute_not_exists(pk) OR expiresAt < :now',
        ExpressionAttributeValues: { ':now': Math.floor(now / 1000) },
      }));
      return undefined;
    } catch (error) {
      if (!(error instanceof ConditionalCheckFailedException)) throw error;
      const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: `IDEM#${accountId}#${key}`, sk: 'META' }, ConsistentRead: true }));
      // Gone in between (released after a failure): let the caller go ahead.
      return Item && { ...strip<IdempotencyRecord>(Item), expiresAt: Item.expiresAt as number };
    }
  }

  async completeIdempotencyKey(accountId: string, key: string, response: NonNullable<IdempotencyRecord['response']>): Promise<void> {
    await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: { pk: `IDEM#${accountId}#${key}`, sk: 'META' },
      UpdateExpression: 'SET #status = :completed, #response = :response',
      ExpressionAttributeNames: { '#status': 'status', '#response': 'response' },
      ExpressionAttributeValues: { ':completed': 'completed', ':response': response },
    }));
  }

  async releaseIdempotencyKey(accountId: string, key: string): Promise<void> {
    await this.doc.send(new DeleteCommand({ TableName: this.table, Key: { pk: `IDEM#${accountId}#${key}`, sk: 'META' } }));
  }

  private async queryAll(input: Omit<ConstructorParameters<typeof QueryCommand>[0], 'TableName'>): Promise<Record<string, unknown>[]> {
    const items: Record<string, unknown>[] = [];
    let ExclusiveStartKey: Record<string, unknown> | undefined;
    do {
      const page = await this.doc.send(new QueryCommand({ ...input, TableName: this.table, ExclusiveStartKey }));
      items.push(...(page.Items ?? []));
      ExclusiveStartKey = page.LastEvaluatedKey;
    } while (ExclusiveStartKey);
    return items;
  }
}
