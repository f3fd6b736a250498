import { DescribeExecutionCommand, ExecutionDoesNotExist, SFNClient } from '@aws-sdk/client-sfn';
import middy from '@middy/core';
import { logger } from '#core/logger.ts';
import { reapOperation } from '#core/operations.ts';
import { stepDeps } from '../steps/deps.ts';

const sfn = new SFNClient({});

async function executionStatus(executionArn: string): Promise<string | undefined> {
  try {
    return (await sfn.send(new DescribeExecutionCommand({ executionArn }))).status;
  } catch (error) {
    if (error instanceof ExecutionDoesNotExist) return undefined;
    throw error;
  }
}

/** Finds unfinished operations (sparse index, no scan) and ends those whose execution is gone. */
export const handler = middy({ timeoutEarlyInMillis: 0 }).handler(async () => {
  const deps = { ...(await stepDeps()), executionStatus };
  const now = new Date();
  const active = await deps.store.listActiveOperations(now.toISOString());
  let reaped = 0;
  for (const operation of active) {
    if (await reapOperation(deps, operation, now)) reaped++;
  }
  if (reaped) logger.warn('ended lost operations', { reaped });
  return { active: active.length, reaped };
});
