import { cpus } from 'node:os';
import { BatchWriteCommand, DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { runMaintenanceDispatcher } from '#core/maintenance.ts';
import { newMaintenance } from '#core/maintenance-model.ts';
import { MaintenanceStore, maintenanceItem } from '#core/maintenance-store.ts';
import { isOpen, lastWindowStart, type MaintenanceWindow, nextWindowStart, remaining, weekdays, weekMs, windowEnd } from '#core/maintenance-window.ts';
import type { Database } from '#core/model.ts';
import { Store } from '#core/store.ts';
import type { EventPublisher } from '#core/events.ts';
import type { Workflows } from '#core/workflows.ts';
import { ensureTable, localDynamoClient, startDynamoLocal } from '../local/dynamodb.ts';

/**
 * `npm run bench:maintenance`: one maintenance dispatcher tick over a fleet of BENCH_DATABASES databases (default
 * 100,000) in DynamoDB Local, each with a window in one of the 168 weekly slots and a maintenance item waiting
 * for it (a fleet-wide rollout: the worst case for the index), of which BENCH_DUE (default 1,000) are due at the
 * tick. The start is stubbed at the workflow boundary (no state machine runs); everything before it is the real
 * code: the index queries, the database reads, the conditional writes. Reports items read and the read capacity
 * the index queries consumed (ReturnConsumedCapacity) against the number due, and the tick's time.
 */

const fleet = Number(process.env.BENCH_DATABASES ?? 100_000);
const due = Number(process.env.BENCH_DUE ?? 1_000);
const tableName = 'dbplane-bench';
const accounts = 1_000;
/** The tick: a Sunday evening. */
const tick = new Date('2026-11-29T22:30:00.000Z');

const dynamo = await startDynamoLocal();
try {
  const client = localDynamoClient(dynamo.endpoint);
  await ensureTable(client, tableName);
  const doc = DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });

  // Every database gets a 24-hour window (so 24 of the 168 slots are open at the tick, the most the dispatcher
  // ever queries) and an item planned in its next window; `due` of those whose window is open now (with more
  // than an hour left, so each fits) are planned in the open window instead.
  const created = new Date(tick.getTime() - weekMs).toISOString();
  let dueLeft = due;
  const items: Record<string, unknown>[] = [];
  for (let i = 0; i < fleet; i++) {
    const slot = i % 168;
    const window: MaintenanceWindow = { day: weekdays[Math.floor(slot / 24)], hour: slot % 24, durationHours: 24 };
    const id = `db-bench${String(i).padStart(18, '0')}`;
    const database: Database = {
      id, accountId: `acc-bench${i % accounts}`, name: `bench-${i}`, engine: 'postgresql', version: '16.13', plan: 'starter-512', status: 'running',
      username: 'app', databaseName: 'app', passwordVerifier: 'SCRAM-SHA-256$bench', backupHour: 3, maintenanceWindow: window, rev: 1,
      createdAt: created, updatedAt: created,
    };
    const isDue = dueLeft > 0 && isOpen(window, tick) && remaining(window, tick) > 3_600_000;
    if (isDue) dueLeft--;
    const start = isDue ? lastWindowStart(window, tick) : nextWindowStart(window, new Date(tick.getTime() + 1));
    const item = {
      ...newMaintenance(database, { kind: 'upgrade', source: 'operator', target: { version: '16.14' }, status: 'notified', notifiedAt: created }, new Date(created)),
      windowStart: start.toISOString(),
      windowEnd: windowEnd(window, start).toISOString(),
    };
    items.push({ pk: `DB#${id}`, sk: 'META', ...database }, maintenanceItem(item));
  }
  if (dueLeft > 0) throw new Error(`only ${due - dueLeft} windows are open at the tick; lower BENCH_DUE`);

  const writeStart = performance.now();
  const batches = Array.from({ length: Math.ceil(items.length / 25) }, (_, i) => items.slice(i * 25, i * 25 + 25));
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < batches.length) {
      let requests = batches[next++].map((Item) => ({ PutRequest: { Item } }));
      while (requests.length > 0) {
        const { UnprocessedItems } = await doc.send(new BatchWriteCommand({ RequestItems: { [tableName]: requests } }));
        requests = (UnprocessedItems?.[tableName] ?? []) as typeof requests;
      }
    }
  }));
  const writeSeconds = (performance.now() - writeStart) / 1000;

  const maintenance = new MaintenanceStore(client, tableName);
  const started: string[] = [];
  const deps = {
    store: new Store(client, tableName),
    maintenance,
    workflows: { startMaintenance: async (_input: unknown, name: string) => { started.push(name); return undefined; } } as unknown as Workflows,
    events: { maintenanceStatusChanged: async () => undefined } as unknown as EventPublisher,
  };
  const tickStart = performance.now();
  const result = await runMaintenanceDispatcher(deps, tick);
  const tickMs = performance.now() - tickStart;
  if (result.due !== due || started.length !== due) throw new Error(`expected ${due} due and started, got ${JSON.stringify(result)}`);

  console.log(`## Maintenance dispatcher — \`BENCH_DUE=${due} npm run bench:maintenance\` (${new Date().toISOString()}, ${cpus().length} × ${cpus()[0]?.model}, node ${process.version})\n`);
  console.log('| databases (items in the index) | due | index queries | items read | index read capacity (RCU) | database reads (GetItem) | started | tick |');
  console.log('|---|---|---|---|---|---|---|---|');
  console.log(`| ${fleet} (${fleet}) | ${due} | ${result.slots} | ${result.due} | ${maintenance.consumedReadUnits} | ${result.due} | ${result.started} | ${Math.round(tickMs)} ms |`);
  console.log(`\n(fleet written with BatchWrite in ${writeSeconds.toFixed(1)} s)`);
} finally {
  await dynamo.stop();
}
