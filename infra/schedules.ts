import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import type { WorkflowName } from '../functions/core/config.ts';
import { schedules as scheduleTable, type Schedule } from '../functions/schedules/schedules.ts';
import { DbplaneFunction, type SharedResources } from './function.ts';

export interface SchedulesProps {
  readonly shared: SharedResources;
  readonly stateMachines: Readonly<Record<WorkflowName, sfn.StateMachine>>;
  /**
   * The schedules to deploy.
   * @default schedules from functions/schedules/schedules.ts
   */
  readonly schedules?: readonly Schedule[];
}

/** An EventBridge rule firing a Lambda per schedule. */
export class Schedules extends Construct {
  readonly functions: Readonly<Record<string, DbplaneFunction>>;
  readonly rules: Readonly<Record<string, events.Rule>>;

  constructor(scope: Construct, id: string, props: SchedulesProps) {
    super(scope, id);
    const functions: Record<string, DbplaneFunction> = {};
    const rules: Record<string, events.Rule> = {};
    for (const schedule of props.schedules ?? scheduleTable) {
      if (functions[schedule.id]) throw new Error(`schedule ${schedule.id} is declared twice`);
      if (!/^(rate|cron)\(.+\)$/.test(schedule.expression)) {
        throw new Error(`schedule ${schedule.id} has an invalid expression '${schedule.expression}'`);
      }
      const fn = new DbplaneFunction(this, schedule.id, {
        entry: schedule.entry,
        handler: schedule.handler,
        shared: props.shared,
        agentAccess: true,
        stateMachines: props.stateMachines,
        description: schedule.description.slice(0, 256),
      });
      rules[schedule.id] = new events.Rule(this, `${schedule.id}Rule`, {
        description: schedule.description.slice(0, 512),
        schedule: events.Schedule.expression(schedule.expression),
        targets: [new targets.LambdaFunction(fn, { retryAttempts: 2 })],
      });
      functions[schedule.id] = fn;
    }
    this.functions = functions;
    this.rules = rules;
  }
}
