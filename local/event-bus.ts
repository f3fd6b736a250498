import { randomUUID } from 'node:crypto';
import { type EventRule, eventRules } from '../functions/events/rules.ts';
import { invokeHandler } from './lambda.ts';

/**
 * EventBridge on one machine: `PutEvents` from the real SDK lands here and each event goes, like
 * EventBridge, asynchronously and with retries, to the handler of every rule CDK deploys that matches it.
 */

interface PutEventsRequest {
  Entries: { Source: string; DetailType: string; Detail: string; EventBusName?: string }[];
}

function matches(rule: EventRule, event: { source: string; 'detail-type': string }): boolean {
  return rule.pattern.source.includes(event.source) && rule.pattern['detail-type'].includes(event['detail-type']);
}

export function createLocalEventBus(options: { attempts?: number; onError?: (error: unknown) => void } = {}) {
  const pending = new Set<Promise<void>>();
  const attempts = options.attempts ?? 3;

  async function deliver(rule: EventRule, event: unknown): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await invokeHandler(rule.entry, rule.handler, event);
        return;
      } catch (error) {
        if (attempt >= attempts) return options.onError?.(error);
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
  }

  return {
    targets: {
      'AWSEvents.PutEvents': async (body: unknown) => {
        const entries = (body as PutEventsRequest).Entries.map((entry) => {
          const event = {
            version: '0', id: randomUUID(), 'detail-type': entry.DetailType, source: entry.Source,
            account: '000000000000', time: new Date().toISOString(), region: 'us-east-1', resources: [],
            detail: JSON.parse(entry.Detail) as unknown,
          };
          for (const rule of eventRules.filter((r) => matches(r, event))) {
            const delivery = deliver(rule, event).finally(() => pending.delete(delivery));
            pending.add(delivery);
          }
          return { EventId: event.id };
        });
        return { FailedEntryCount: 0, Entries: entries };
      },
    },
    /** Waits until every event put so far has been delivered (or given up on). */
    async drain(): Promise<void> {
      while (pending.size) await Promise.all([...pending]);
    },
  };
}
