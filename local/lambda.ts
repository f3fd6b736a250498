import { randomUUID } from 'node:crypto';
import { resolve } from 'node:path';
import type { Context } from 'aws-lambda';

/**
 * Runs a Lambda handler in-process: the same module and export that CDK bundles, with a minimal
 * Lambda context. Modules are loaded once, like a warm container.
 */

export const projectRoot = resolve(import.meta.dirname, '..');

type Handler = (event: unknown, context: Context) => Promise<unknown>;
const modules = new Map<string, Promise<Record<string, unknown>>>();

export async function loadHandler(entry: string, exportName: string): Promise<Handler> {
  const path = resolve(projectRoot, entry);
  if (!modules.has(path)) modules.set(path, import(path));
  const fn = (await modules.get(path)!)[exportName];
  if (typeof fn !== 'function') throw new Error(`${entry} has no handler export "${exportName}"`);
  return fn as Handler;
}

/** A handler's Lambda function name here (its context's `functionName`). */
export const localFunctionName = (entry: string, exportName: string) => `${entry}#${exportName}`;

export async function invokeHandler(entry: string, exportName: string, event: unknown): Promise<unknown> {
  const handler = await loadHandler(entry, exportName);
  const deadline = Date.now() + 900_000;
  const context = {
    awsRequestId: randomUUID(),
    functionName: localFunctionName(entry, exportName),
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:us-east-1:000000000000:function:${exportName}`,
    memoryLimitInMB: '1024',
    logGroupName: 'local',
    logStreamName: 'local',
    callbackWaitsForEmptyEventLoop: false,
    getRemainingTimeInMillis: () => deadline - Date.now(),
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  } satisfies Context;
  return handler(event, context);
}
