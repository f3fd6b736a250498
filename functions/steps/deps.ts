import { agentClient } from '#core/agent-client.ts';
import { EventPublisher } from '#core/events.ts';
import { getStore } from '#core/http.ts';
import type { StepDeps } from '#core/operations.ts';

let events: EventPublisher | undefined;
/** The steps' dependencies, built once per Lambda container. */
export async function stepDeps(): Promise<StepDeps> {
  return { store: getStore(), agent: await agentClient(), events: (events ??= new EventPublisher()) };
}
