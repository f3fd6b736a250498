import { RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { AgentAccess } from './agent.ts';
import { Api } from './api.ts';
import { EventHandlers } from './events.ts';
import type { SharedResources } from './function.ts';
import { acknowledgeNagFindings } from './nag.ts';
import { Schedules } from './schedules.ts';
import { Storage } from './storage.ts';
import { Workflows } from './workflows/workflows.ts';

/** The construct id of the stack, hence its template's file name (`Dbplane.template.json`). */
export const stackId = 'Dbplane';

export interface DbplaneStackProps extends StackProps {
  /**
   * What happens to the table and the master key when the stack is deleted.
   * @default RemovalPolicy.RETAIN
   */
  readonly removalPolicy?: RemovalPolicy;
}

/** The whole control plane: table, key and bus; step Lambdas and state machines; the HTTP API; schedules; event rules. */
export class DbplaneStack extends Stack {
  readonly storage: Storage;
  readonly agent: AgentAccess;
  readonly workflows: Workflows;
  readonly api: Api;
  readonly schedules: Schedules;
  readonly eventHandlers: EventHandlers;

  constructor(scope: Construct, id: string, props: DbplaneStackProps = {}) {
    super(scope, id, { description: 'dbplane: the control plane of a managed database service', ...props });
    this.storage = new Storage(this, 'Storage', { removalPolicy: props.removalPolicy });
    this.agent = new AgentAccess(this, 'Agent', { key: this.storage.key });
    const shared: SharedResources = {
      table: this.storage.table,
      bus: this.storage.bus,
      agentUrl: this.agent.url,
      agentSecret: this.agent.secret,
      masterKey: this.storage.key,
      logGroup: new logs.LogGroup(this, 'FunctionLogs', { retention: logs.RetentionDays.ONE_MONTH, removalPolicy: RemovalPolicy.DESTROY }),
    };
    this.workflows = new Workflows(this, 'Workflows', { shared });
    const { stateMachines } = this.workflows;
    this.api = new Api(this, 'Api', { shared, stateMachines });
    this.schedules = new Schedules(this, 'Schedules', { shared, stateMachines });
    this.eventHandlers = new EventHandlers(this, 'Events', { shared, stateMachines });
    acknowledgeNagFindings(this);
  }
}
