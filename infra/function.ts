import * as path from 'node:path';
import { ArnFormat, type CfnElement, Duration, Stack, Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type * as events from 'aws-cdk-lib/aws-events';
import type * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { NodejsFunction, OutputFormat } from 'aws-cdk-lib/aws-lambda-nodejs';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type { Construct, IConstruct } from 'constructs';
import { envNames, workflowNames, type WorkflowName } from '../functions/core/config.ts';
import { keyEnvNames } from '../functions/core/keys.ts';
import { projectRoot } from './project.ts';

/** CloudFormation metadata keys on every Lambda function: the local runtime maps a Task to this module/export. */
export const entryMetadataKey = 'dbplane:entry';
export const handlerMetadataKey = 'dbplane:handler';

/** What every dbplane Lambda is wired to. */
export interface SharedResources {
  readonly table: dynamodb.ITable;
  readonly bus: events.IEventBus;
  readonly agentUrl: string;
  readonly agentSecret: secretsmanager.ISecret;
  /** Wraps the databases' data keys. */
  readonly masterKey: kms.IKey;
  /**
   * Where every function logs (Lambda gives each function its own streams). One group, not one per
   * function: at ~100 functions, a group each would take the stack past CloudFormation's 500 resources.
   */
  readonly logGroup: logs.ILogGroup;
}

export interface DbplaneFunctionProps {
  /** The handler module, relative to the project root (e.g. `functions/api/databases.ts`). */
  readonly entry: string;
  /**
   * The export of `entry` that handles the event.
   * @default 'handler'
   */
  readonly handler?: string;
  readonly shared: SharedResources;
  /** @default - none */
  readonly description?: string;
  /** @default Duration.seconds(30) */
  readonly timeout?: Duration;
  /** @default 256 */
  readonly memorySize?: number;
  /**
   * Whether the function talks to the agent (reads the agent secret).
   * @default false
   */
  readonly agentAccess?: boolean;
  /**
   * Whether the function wraps data keys with the master key (`MASTER_KEY_ID`, kms:Encrypt).
   * @default false
   */
  readonly keyAccess?: boolean;
  /**
   * State machines the function may start and describe executions of; their ARNs are passed as
   * `STATE_MACHINE_ARN_<NAME>`.
   * @default - none
   */
  readonly stateMachines?: Readonly<Record<WorkflowName, sfn.StateMachine>>;
  /**
   * A role of its own rather than the one shared by the functions with the same permissions: for a
   * function granted more after it is made (a step that starts other workflows), so the grant is its alone.
   * @default false
   */
  readonly ownRole?: boolean;
}

/**
 * A NodejsFunction with dbplane's defaults: the newest Node.js runtime, arm64, minified ESM bundle with
 * source maps, the shared log group, the environment from `functions/core/config.ts`, and read/write
 * access to the table and the bus.
 */
export class DbplaneFunction extends NodejsFunction {
  readonly entryPath: string;
  readonly handlerName: string;

  constructor(scope: Construct, id: string, props: DbplaneFunctionProps) {
    const handler = props.handler ?? 'handler';
    if (path.isAbsolute(props.entry) || props.entry.startsWith('..')) {
      throw new Error(`entry must be relative to the project root, got '${props.entry}'`);
    }
    if (!/^[A-Za-z_$][\w$]*$/.test(handler)) throw new Error(`handler must be an export name, got '${handler}'`);

    super(scope, id, {
      role: roleFor(scope, props, props.ownRole ? `${id}Role` : undefined),
      entry: path.join(projectRoot, props.entry),
      handler,
      description: props.description,
      projectRoot,
      depsLockFilePath: path.join(projectRoot, 'package-lock.json'),
      runtime: lambda.Runtime.NODEJS_24_X,
      architecture: lambda.Architecture.ARM_64,
      memorySize: props.memorySize ?? 256,
      timeout: props.timeout ?? Duration.seconds(30),
      tracing: lambda.Tracing.ACTIVE,
      loggingFormat: lambda.LoggingFormat.JSON,
      logGroup: props.shared.logGroup,
      bundling: {
        format: OutputFormat.ESM,
        mainFields: ['module', 'main'],
        // Some CommonJS dependencies call require(); give the ESM bundle one.
        banner: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);",
        minify: true,
        sourceMap: true,
        target: 'node24',
      },
      environment: {
        NODE_OPTIONS: '--enable-source-maps',
        [envNames.tableName]: props.shared.table.tableName,
        [envNames.eventBusName]: props.shared.bus.eventBusName,
        [envNames.agentUrl]: props.shared.agentUrl,
        [envNames.agentSecretArn]: props.shared.agentSecret.secretArn,
        ...stateMachineEnvironment(props.stateMachines),
        ...(props.keyAccess ? { [keyEnvNames.masterKeyId]: props.shared.masterKey.keyArn } : {}),
      },
    });
    this.entryPath = props.entry;
    this.handlerName = handler;

    const cfn = this.node.defaultChild as lambda.CfnFunction;
    cfn.addMetadata(entryMetadataKey, props.entry);
    cfn.addMetadata(handlerMetadataKey, handler);
  }
}

/**
 * The role of the functions that need exactly this set of permissions, made by the first of them: the
 * same least privilege as a role each, without ~100 roles and policies in a stack CloudFormation caps at
 * 500 resources. Our own role instead of AWSLambdaBasicExecutionRole: it may write to the functions' log group only.
 */
function roleFor(scope: Construct, props: DbplaneFunctionProps, ownId?: string): iam.Role {
  const stack = Stack.of(scope);
  const grants = [props.agentAccess && 'Agent', props.keyAccess && 'Key', props.stateMachines && 'Workflows'].filter(Boolean).join('');
  const [roleScope, id] = ownId ? [scope, ownId] : [stack, `FunctionRole${grants || 'Base'}`];
  const existing = roleScope.node.tryFindChild(id);
  if (existing) return existing as iam.Role;

  const role = new iam.Role(roleScope, id, {
    assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
    description: `dbplane functions with table, bus${grants ? `, ${grants.replace(/([a-z])([A-Z])/g, '$1, $2').toLowerCase()}` : ''} access`,
  });
  props.shared.logGroup.grantWrite(role);
  props.shared.table.grantReadWriteData(role);
  props.shared.bus.grantPutEventsTo(role);
  if (props.agentAccess) props.shared.agentSecret.grantRead(role);
  if (props.keyAccess) props.shared.masterKey.grantEncrypt(role);
  Validations.of(role).acknowledge({
    id: 'AwsSolutions-IAM5[Resource::*]',
    reason: 'X-Ray tracing (xray:PutTraceSegments, xray:PutTelemetryRecords) supports no resource-level permissions',
  });
  for (const stateMachine of Object.values(props.stateMachines ?? {})) {
    stateMachine.grantStartExecution(role);
    const executions = stack.formatArn({
      service: 'states',
      resource: 'execution',
      resourceName: `${stateMachine.stateMachineName}:*`,
      arnFormat: ArnFormat.COLON_RESOURCE_NAME,
    });
    role.addToPrincipalPolicy(new iam.PolicyStatement({ actions: ['states:DescribeExecution'], resources: [executions] }));
    Validations.of(role).acknowledge({
      id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:<${logicalIdOf(stateMachine)}.Name>:*]`,
      reason: 'executions are named after operation ids, unknown at deploy time; limited to DescribeExecution on this state machine',
    });
  }
  return role;
}

function stateMachineEnvironment(stateMachines: DbplaneFunctionProps['stateMachines']): Record<string, string> {
  if (!stateMachines) return {};
  return Object.fromEntries(workflowNames.map((name) => [envNames.stateMachineArn(name), stateMachines[name].stateMachineArn]));
}

/** The logical id of a construct's CloudFormation resource, as cdk-nag names it in findings. */
export function logicalIdOf(construct: IConstruct): string {
  const resource = (construct.node.defaultChild ?? construct) as CfnElement;
  return Stack.of(resource).resolve(resource.logicalId) as string;
}
