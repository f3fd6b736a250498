import { ConditionalCheckFailedException, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DeleteCommand, DynamoDBDocumentClient, GetCommand, PutCommand, QueryCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { config } from './config.ts';
import { outboundPolicy } from './outbound-url.ts';
import { type DeliveryAttempt, DeliveryRecord, WebhookRecord, type WebhookDeps } from './webhooks.ts';

/**
 * Webhooks and their deliveries in the single table (zod drops the key attributes on the way out):
 *   ACCOUNT#<account>/WEBHOOK#<id>   a webhook with its signing secret: an event's account finds its
 *                                    webhooks with one query on its own key.
 *   WEBHOOK#<id>/DELIVERY#<id>       one event's delivery to one webhook with its attempts; the id comes
 *                                    from the event's, so a redelivered event finds its delivery taken.
 *                                    TTL-expired after `deliveryRetentionDays`.
 * A delivery waiting for a retry (or being attempted) sits in the sparse gsi2 under `WEBHOOK_RETRY`,
 * sorted by when it is due; the retry schedule queries what is due and nothing else.
 */

const webhookKey = (accountId: string, id: string) => ({ pk: `ACCOUNT#${accountId}`, sk: `WEBHOOK#${id}` });
const deliveryKey = (webhookId: string, id: string) => ({ pk: `WEBHOOK#${webhookId}`, sk: `DELIVERY#${id}` });
const retryPartition = 'WEBHOOK_RETRY';
const deliveryRetentionDays = 30;

export class WebhookStore {
  private readonly doc: DynamoDBDocumentClient;

  constructor(client = new DynamoDBClient({}), readonly table = config.tableName()) {
    this.doc = DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });
  }

  async putWebhook(webhook: WebhookRecord): Promise<void> {
    await this.doc.send(new PutCommand({
      TableName: this.table,
      Item: { ...webhookKey(webhook.accountId, webhook.id), ...webhook },
      ConditionExpression: 'attribute_not_exists(pk)',
    }));
  }

  async getWebhook(accountId: string, id: string): Promise<WebhookRecord | undefined> {
    const { Item } = await this.doc.send(new GetCommand({ TableName: this.table, Key: webhookKey(accountId, id), ConsistentRead: true }));
    return Item && WebhookRecord.parse(Item);
  }

  /** An account has at most a handful of webhooks (see maxWebhooksPerAccount): one page holds them all. */
  async listWebhooks(accountId: string): Promise<WebhookRecord[]> {
    const { Items = [] } = await this.doc.send(new QueryCommand({
      TableName: this.table,
      KeyConditionExpression: 'pk = :account AND begins_with(sk, :webhook)',
      ExpressionAttributeValues: { ':account': `ACCOUNT#${accountId}`, ':webhook': 'WEBHOOK#' },
      ConsistentRead: true,
    }));
    return Items.map((item) => WebhookRecord.parse(item));
  }

  /** Deletes and returns the webhook; undefined when there was none. */
  async deleteWebhook(accountId: string, id: string): Promise<WebhookRecord | undefined> {
    const { Attributes } = await this.doc.send(new DeleteCommand({ TableName: this.table, Key: webhookKey(accountId, id), ReturnValues: 'ALL_OLD' }));
    return Attributes && WebhookRecord.parse(Attributes);
  }

  /** Replaces the signing secret; undefined when the webhook does not exist. */
  async setSecret(accountId: string, id: string, signingSecret: string, at: string): Promise<WebhookRecord | undefined> {
    try {
      const { Attributes } = await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: webhookKey(accountId, id),
        UpdateExpression: 'SET signingSecret = :secret, secretRotatedAt = :at',
        ConditionExpression: 'attribute_exists(pk)',
        ExpressionAttributeValues: { ':secret': signingSecret, ':at': at },
        ReturnValues: 'ALL_NEW',
      }));
      return WebhookRecord.parse(Attributes);
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException) return undefined;
      throw error;
    }
  }

  /**
   * Records a new delivery, claimed by its caller until `leaseUntil` (after that the retry schedule takes
   * it over, should the caller die mid-attempt). False when the delivery exists already.
   */
  async createDelivery(delivery: DeliveryRecord, leaseUntil: string): Promise<boolean> {
    try {
      await this.doc.send(new PutCommand({
        TableName: this.table,
        Item: {
          ...deliveryKey(delivery.webhookId, delivery.id),
          gsi2pk: retryPartition,
          gsi2sk: leaseUntil,
          expiresAt: Math.floor(Date.parse(delivery.createdAt) / 1000) + deliveryRetentionDays * 86_400,
          ...delivery,
        },
        ConditionExpression: 'attribute_not_exists(pk)',
      }));
      return true;
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException) return false;
      throw error;
    }
  }

  /** Deliveries due by `now`, oldest first, each with the index position it was seen at (to claim it). */
  async dueDeliveries(now: string, limit: number): Promise<{ delivery: DeliveryRecord; due: string }[]> {
    const { Items = [] } = await this.doc.send(new QueryCommand({
      TableName: this.table,
      IndexName: 'gsi2',
      KeyConditionExpression: 'gsi2pk = :retry AND gsi2sk <= :now',
      ExpressionAttributeValues: { ':retry': retryPartition, ':now': now },
      Limit: limit,
    }));
    return Items.map((item) => ({ delivery: DeliveryRecord.parse(item), due: item.gsi2sk as string }));
  }

  /** Takes a due delivery until `leaseUntil`; false when another tick took it first (or it has moved on). */
  async claimDelivery(delivery: Pick<DeliveryRecord, 'webhookId' | 'id'>, due: string, leaseUntil: string): Promise<boolean> {
    try {
      await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: deliveryKey(delivery.webhookId, delivery.id),
        UpdateExpression: 'SET gsi2sk = :lease',
        ConditionExpression: 'gsi2pk = :retry AND gsi2sk = :due',
        ExpressionAttributeValues: { ':lease': leaseUntil, ':retry': retryPartition, ':due': due },
      }));
      return true;
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException) return false;
      throw error;
    }
  }

  /**
   * Records an attempt and where the delivery stands: due again at `nextAttemptAt`, or settled and out of
   * the retry index. Once only: false when that attempt number is recorded already (a slow attempt whose
   * lease ran out raced a retry; the first one recorded stands).
   */
  async recordAttempt(delivery: Pick<DeliveryRecord, 'webhookId' | 'id'>, attempt: DeliveryAttempt, status: DeliveryRecord['status']): Promise<boolean> {
    const retry = attempt.nextAttemptAt !== undefined;
    const set = ['attempts = list_append(attempts, :attempt)', '#status = :status', 'updatedAt = :at'];
    if (retry) set.push('nextAttemptAt = :next', 'gsi2sk = :next');
    try {
      await this.doc.send(new UpdateCommand({
        TableName: this.table,
        Key: deliveryKey(delivery.webhookId, delivery.id),
        UpdateExpression: `SET ${set.join(', ')}${retry ? '' : ' REMOVE nextAttemptAt, gsi2pk, gsi2sk'}`,
        ConditionExpression: 'size(attempts) = :previous',
        ExpressionAttributeNames: { '#status': 'status' },
        ExpressionAttributeValues: {
          ':attempt': [attempt], ':status': status, ':at': attempt.at, ':previous': attempt.attempt - 1,
          ...(retry ? { ':next': attempt.nextAttemptAt } : {}),
        },
      }));
      return true;
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException) return false;
      throw error;
    }
  }

  /** Takes a delivery out of the retry index without an attempt (its webhook is gone). */
  async abandonDelivery(delivery: Pick<DeliveryRecord, 'webhookId' | 'id'>, at: string): Promise<void> {
    await this.doc.send(new UpdateCommand({
      TableName: this.table,
      Key: deliveryKey(delivery.webhookId, delivery.id),
      UpdateExpression: 'SET #status = :failed, updatedAt = :at REMOVE nextAttemptAt, gsi2pk, gsi2sk',
      ExpressionAttributeNames: { '#status': 'status' },
      ExpressionAttributeValues: { ':failed': 'failed', ':at': at },
    }));
  }

  /** The newest `limit` deliveries of a webhook (ids sort by the event's time). */
  async listDeliveries(webhookId: string, limit: number): Promise<DeliveryRecord[]> {
    const { Items = [] } = await this.doc.send(new QueryCommand({
      TableName: this.table,
      KeyConditionExpression: 'pk = :webhook AND begins_with(sk, :delivery)',
      ExpressionAttributeValues: { ':webhook': `WEBHOOK#${webhookId}`, ':delivery': 'DELIVERY#' },
      ScanIndexForward: false,
      Limit: limit,
    }));
    return Items.map((item) => DeliveryRecord.parse(item));
  }
}

let shared: WebhookStore | undefined;
/** The store (one per Lambda container, created lazily so modules load without configuration) and the operator's policy as it is now. */
export const webhookDeps = (): WebhookDeps => ({ webhooks: (shared ??= new WebhookStore()), policy: outboundPolicy() });
