import { type Command, InvalidArgumentError, Option } from 'commander';
import { finishedStatuses, Operation } from '#core/model.ts';
import { CliError } from './client.ts';
import type { Context } from './context.ts';
import { duration, elapsed } from './output.ts';

export interface WaitOptions {
  wait?: boolean;
  timeout: number;
}

const pollIntervalMs = 300;
const defaultTimeoutMs = 10 * 60_000;

export function addWaitOptions(command: Command): Command {
  return command
    .option('--wait', 'follow the operation until it finishes; exit 1 unless it succeeds')
    .addOption(new Option('--timeout <duration>', 'how long --wait waits, e.g. 90s or 15m')
      .argParser(parseDuration)
      .default(defaultTimeoutMs, '10m'));
}

/** `90`, `90s`, `15m`, `1h`, `500ms`; a bare number is seconds. */
export function parseDuration(value: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
  if (!match) throw new InvalidArgumentError('expected a duration such as 90s, 15m or 1h');
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 's'] ?? 1000;
  return Math.round(Number(match[1]) * unit);
}

/**
 * Polls the operation until it is finished, printing each step when it starts and when it ends, and
 * throws when it did not succeed. The operation keeps running on the server if the deadline passes.
 */
export async function waitForOperation(ctx: Context, first: Operation, timeoutMs: number): Promise<Operation> {
  const deadline = Date.now() + timeoutMs;
  const render = stepRenderer(ctx.progress);
  ctx.progress(`waiting for ${first.kind} operation ${first.id}`);
  let operation = first;
  for (;;) {
    render(operation);
    if (finishedStatuses.includes(operation.status)) break;
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new CliError(`gave up waiting after ${duration(timeoutMs)}: operation ${operation.id} is still ${operation.status}; ` +
        `follow it with: dbplane operations show ${operation.id} --wait`);
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(pollIntervalMs, remaining)));
    operation = await ctx.client.get(`/operations/${encodeURIComponent(operation.id)}`, Operation);
  }
  const took = elapsed(operation.createdAt, operation.finishedAt ?? operation.updatedAt);
  if (operation.status !== 'succeeded') {
    throw new CliError(`operation ${operation.id} ${operation.status} after ${took}${operation.error ? `: ${operation.error}` : ''}`);
  }
  ctx.progress(`operation ${operation.id} succeeded in ${took}`);
  return operation;
}

/**
 * Prints only what changed since the last poll. A step is identified by its position, and a retried
 * step (more attempts) is announced again, so a slow retry loop is visible as it happens.
 */
function stepRenderer(print: (line: string) => void): (operation: Operation) => void {
  const seen: { attempts: number; finished: boolean }[] = [];
  return (operation) => {
    operation.steps.forEach((step, i) => {
      const before = seen[i];
      const attempt = step.attempts > 1 ? ` (attempt ${step.attempts})` : '';
      if (!before || step.attempts > before.attempts) print(`  -> ${step.name}${attempt}`);
      const finished = step.status !== 'running';
      if (finished && !(before?.finished && before.attempts === step.attempts)) {
        const took = step.finishedAt ? ` ${elapsed(step.startedAt, step.finishedAt)}` : '';
        print(step.status === 'succeeded'
          ? `  ok ${step.name}${took}`
          : `  FAILED ${step.name}${took}${step.detail ? `: ${step.detail}` : ''}`);
      }
      seen[i] = { attempts: step.attempts, finished };
    });
  };
}
