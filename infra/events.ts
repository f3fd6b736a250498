import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import type { WorkflowName } from '../functions/core/config.ts';
import { eventRules, type EventRule } from '../functions/events/rules.ts';
import { DbplaneFunction, type SharedResources } from './function.ts';

export interface EventHandlersProps {
  readonly shared: SharedResources;
  /** Handlers may start long operations (e.g. the backup after a restore). */
  readonly stateMachines: Readonly<Record<WorkflowName, sfn.StateMachine>>;
  /**
   * The rules to deploy.
   * @default eventRules from functions/events/rules.ts
   */
  readonly rules?: readonly EventRule[];
}

/** A rule on the dbplane bus and its Lambda per event rule. */
export class EventHandlers extends Construct {
  readonly functions: Readonly<Record<string, DbplaneFunction>>;
  readonly rules: Readonly<Record<string, events.Rule>>;

  constructor(scope: Construct, id: string, props: EventHandlersProps) {
    super(scope, id);
    const functions: Record<string, DbplaneFunction> = {};
    const rules: Record<string, events.Rule> = {};
    for (const rule of props.rules ?? eventRules) {
      if (functions[rule.id]) throw new Error(`event rule ${rule.id} is declared twice`);
      const fn = new DbplaneFunction(this, rule.id, {
        entry: rule.entry,
        handler: rule.handler,
        shared: props.shared,
        stateMachines: props.stateMachines,
        description: `event rule ${rule.id}`,
      });
      rules[rule.id] = new events.Rule(this, `${rule.id}Rule`, {
        eventBus: props.shared.bus,
        eventPattern: { source: [...rule.pattern.source], detailType: [...rule.pattern['detail-type']] },
        targets: [new targets.LambdaFunction(fn, { retryAttempts: 2 })],
      });
      functions[rule.id] = fn;
    }
    this.functions = functions;
    this.rules = rules;
  }
}
