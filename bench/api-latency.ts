import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand } from '@aws-sdk/lib-dynamodb';
import { startRuntime } from '../local/runtime.ts';
import { synthesizeTemplate } from '../local/template.ts';
import { entryMetadataKey, handlerMetadataKey } from '../infra/function.ts';
import { apiClient, newTenant } from '../test/helpers/api.ts';
import { percentile, timeEach } from './timing.ts';

/**
 * `npm run bench`: on this machine, in one run,
 *  1. p50/p99 of GET /databases/{id} through the local runtime vs a raw DynamoDB GetItem of the same item;
 *  2. the time to provision a database (API call to `running`);
 *  3. the size of each Lambda bundle as CDK builds it (minified, and gzipped).
 */

const requests = Number(process.env.BENCH_REQUESTS ?? 1000);
const provisions = Number(process.env.BENCH_PROVISIONS ?? 5);

const fmt = (ms: number) => `${ms.toFixed(2)} ms`;

const dataDir = mkdtempSync(join(tmpdir(), 'dbplane-bench-'));
const runtime = await startRuntime({ dataDir, port: 0 });
try {
  const admin = apiClient(runtime.apiUrl, runtime.adminToken);
  const tenant = await newTenant(admin, runtime.apiUrl, 'bench');

  const provisionTimes: number[] = [];
  let databaseId = '';
  for (let i = 0; i < provisions; i++) {
    const start = performance.now();
    const created = await tenant.api.post('/databases', { name: `bench-${i}`, engine: 'postgresql', plan: 'starter-512' });
    const operation = await tenant.api.waitForOperation(created.body.operation.id);
    if (operation.status !== 'succeeded') throw new Error(`provisioning failed: ${operation.error}`);
    provisionTimes.push(performance.now() - start);
    databaseId = created.body.database.id;
  }
  provisionTimes.sort((a, b) => a - b);

  const doc = DynamoDBDocumentClient.from(new DynamoDBClient({ endpoint: runtime.dynamoEndpoint, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } }));
  const raw = await timeEach(requests, () => doc.send(new GetCommand({ TableName: runtime.tableName, Key: { pk: `DB#${databaseId}`, sk: 'META' }, ConsistentRead: true })));
  const api = await timeEach(requests, async () => {
    const response = await tenant.api.get(`/databases/${databaseId}`);
    if (response.status !== 200) throw new Error(`GET answered ${response.status}`);
  });

  console.log(`# dbplane bench — ${new Date().toISOString()} — ${cpus().length} × ${cpus()[0]?.model}, node ${process.version}`);
  console.log(`\n## GET /databases/{id} (${requests} sequential requests after warm-up)`);
  console.log('| path | p50 | p99 |\n|---|---|---|');
  console.log(`| raw DynamoDB Local GetItem | ${fmt(percentile(raw, 50))} | ${fmt(percentile(raw, 99))} |`);
  console.log(`| API (HTTP → authorizer → handler → DynamoDB Local) | ${fmt(percentile(api, 50))} | ${fmt(percentile(api, 99))} |`);
  console.log(`| ratio API / raw | ${(percentile(api, 50) / percentile(raw, 50)).toFixed(1)}× | ${(percentile(api, 99) / percentile(raw, 99)).toFixed(1)}× |`);
  console.log(`\n## Provisioning (POST /databases → operation succeeded), ${provisions} databases`);
  console.log(`median ${fmt(percentile(provisionTimes, 50))}, max ${fmt(provisionTimes.at(-1)!)}`);
} finally {
  await runtime.stop();
  rmSync(dataDir, { recursive: true, force: true });
}

console.log('\n## Lambda bundles (esbuild, minified, as CDK synthesizes them)');
const { template, assetsDir } = await synthesizeTemplate({ bundle: true });
// Each Lambda's code is the asset named by its S3 key (`<hash>.zip` → `asset.<hash>/`); its entry is in its metadata.
const rows = Object.values(template.Resources)
  .filter((resource) => resource.Type === 'AWS::Lambda::Function' && resource.Metadata?.[entryMetadataKey])
  .map((resource) => {
    const hash = String((resource.Properties?.Code as { S3Key?: string } | undefined)?.S3Key ?? '').replace(/\.zip$/, '');
    const dir = join(assetsDir!, `asset.${hash}`);
    const file = readdirSync(dir).find((f) => /^index\.(m?js)$/.test(f))!;
    const code = readFileSync(join(dir, file));
    return { entry: `${resource.Metadata![entryMetadataKey]}#${resource.Metadata![handlerMetadataKey]}`, bytes: code.length, gzip: gzipSync(code).length };
  })
  .sort((a, b) => b.bytes - a.bytes);
console.log('| bundle | minified | gzip |\n|---|---|---|');
for (const row of rows) console.log(`| ${row.entry} | ${(row.bytes / 1024).toFixed(0)} KB | ${(row.gzip / 1024).toFixed(0)} KB |`);
// A bundling synth leaves its assets to the caller.
rmSync(assetsDir!, { recursive: true, force: true });
