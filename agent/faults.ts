import { DomainError } from '#core/errors.ts';
import type { Fault } from '#core/agent-api.ts';

/** A failure injected through `PUT /v1/faults`; its message is the problem's detail, on purpose. */
export class InjectedFault extends DomainError {
  override readonly name = 'InjectedFault';
  readonly status = 500;
  readonly title = 'Injected fault';
}

export interface Faults {
  add(fault: Fault): void;
  clear(): void;
  /** The first armed fault for this operation (and instance, when the fault names one), disarmed as it is taken. */
  take(operation: Fault['operation'], instanceId: string): Fault | undefined;
}

/** Without fault injection nothing is ever armed, so production code paths can call `take` unconditionally. */
export function createFaults(): Faults {
  let armed: Fault[] = [];
  return {
    add: (fault) => { armed.push(fault); },
    clear: () => { armed = []; },
    take: (operation, instanceId) => {
      const index = armed.findIndex((f) => f.operation === operation && (f.instanceId === undefined || f.instanceId === instanceId));
      return index === -1 ? undefined : armed.splice(index, 1)[0];
    },
  };
}
