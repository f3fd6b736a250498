import type { Command } from 'commander';
import { Operation } from '#core/model.ts';
import { OperationList } from '../../functions/api/schemas.ts';
import { contextOf } from '../context.ts';
import { elapsed, fields, json, table } from '../output.ts';
import { addWaitOptions, waitForOperation, type WaitOptions } from '../wait.ts';
import { findDatabase } from './databases.ts';

export function registerOperations(program: Command): void {
  const operations = program.command('operations').alias('ops').description('follow long-running operations');

  operations.command('list')
    .description("a database's operations, newest first")
    .argument('<database>', 'name or id')
    .action(async (ref: string, _options: unknown, command: Command) => {
      const ctx = await contextOf(command);
      const db = await findDatabase(ctx, ref);
      const { operations: list } = await ctx.client.get(`/databases/${encodeURIComponent(db.id)}/operations`, OperationList);
      if (ctx.json) return ctx.out(json({ operations: list }));
      ctx.out(table(['ID', 'KIND', 'STATUS', 'CREATED', 'DURATION', 'ERROR'],
        list.map((op) => [op.id, op.kind, op.status, op.createdAt, op.finishedAt && elapsed(op.createdAt, op.finishedAt), op.error])));
    });

  addWaitOptions(operations.command('show')
    .description('one operation with its steps')
    .argument('<id>', 'operation id'))
    .action(async (id: string, options: WaitOptions, command: Command) => {
      const ctx = await contextOf(command);
      const operation = await ctx.client.get(`/operations/${encodeURIComponent(id)}`, Operation);
      if (!options.wait) return ctx.out(ctx.json ? json(operation) : operationFields(operation));
      const finished = await waitForOperation(ctx, operation, options.timeout);
      if (ctx.json) ctx.out(json(finished));
    });
}

function operationFields(op: Operation): string {
  const summary = fields([
    ['id', op.id],
    ['kind', op.kind],
    ['database', op.databaseId],
    ['status', op.status],
    ['error', op.error],
    ['created', op.createdAt],
    ['finished', op.finishedAt],
  ]);
  if (op.steps.length === 0) return summary;
  return `${summary}\n${table(['STEP', 'STATUS', 'ATTEMPTS', 'STARTED', 'DURATION', 'DETAIL'],
    op.steps.map((s) => [s.name, s.status, s.attempts, s.startedAt, s.finishedAt && elapsed(s.startedAt, s.finishedAt), s.detail]))}`;
}
