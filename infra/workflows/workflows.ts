import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import type { WorkflowName } from '../../functions/core/config.ts';
import { DbplaneFunction, logicalIdOf, type SharedResources } from '../function.ts';
import {
  healthCheckIntervalSeconds,
  instanceNotHealthyError,
  maxHealthChecks,
  paths,
  stateNames,
  stepHandlerExport,
  steps,
  transientErrors,
  type StepName,
} from './states.ts';

/** CloudFormation metadata on each state machine naming its workflow (see functions/core/config.ts). */
export const workflowMetadataKey = 'dbplane:workflow';

export interface WorkflowsProps {
  readonly shared: SharedResources;
  /**
   * How long an execution may run before Step Functions stops it.
   * @default Duration.hours(2)
   */
  readonly executionTimeout?: Duration;
}

/** One Standard state machine per long operation, composed of the step Lambdas (one Lambda per step, shared). */
export class Workflows extends Construct {
  readonly stateMachines: Readonly<Record<WorkflowName, sfn.StateMachine>>;
  /** The step Lambdas, by step name. */
  readonly steps: Readonly<Record<StepName, DbplaneFunction>>;

  constructor(scope: Construct, id: string, props: WorkflowsProps) {
    super(scope, id);
    const functions = new Construct(this, 'Steps');
    this.steps = Object.fromEntries(
      (Object.keys(steps) as StepName[]).map((name) => [
        name,
        new DbplaneFunction(functions, name, {
          entry: steps[name],
          handler: stepHandlerExport,
          shared: props.shared,
          agentAccess: true,
          timeout: Duration.seconds(60),
          description: `workflow step ${name}`,
        }),
      ]),
    ) as Record<StepName, DbplaneFunction>;

    const timeout = props.executionTimeout ?? Duration.hours(2);
    this.stateMachines = {
      Provision: this.stateMachine('Provision', timeout, (scope) => this.provision(scope)),
      Deprovision: this.stateMachine('Deprovision', timeout, (scope) => this.deprovision(scope)),
    };
  }

  private stateMachine(name: WorkflowName, timeout: Duration, build: (scope: Construct) => sfn.IChainable): sfn.StateMachine {
    const scope = new Construct(this, name);
    const logGroup = new logs.LogGroup(scope, 'Logs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const stateMachine = new sfn.StateMachine(scope, 'StateMachine', {
      stateMachineType: sfn.StateMachineType.STANDARD,
      queryLanguage: sfn.QueryLanguage.JSON_PATH,
      definitionBody: sfn.DefinitionBody.fromChainable(build(scope)),
      comment: `dbplane ${name}: input { operationId, databaseId }`,
      timeout,
      tracingEnabled: true,
      logs: { destination: logGroup, level: sfn.LogLevel.ALL, includeExecutionData: true },
    });
    (stateMachine.node.defaultChild as sfn.CfnStateMachine).addMetadata(workflowMetadataKey, name);
    Validations.of(stateMachine.role).acknowledge({
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'X-Ray tracing and CloudWatch Logs delivery (logs:CreateLogDelivery …) support no resource-level permissions',
    });
    for (const step of Object.values(this.steps)) {
      Validations.of(stateMachine.role).acknowledge({
        id: `AwsSolutions-IAM5[Resource::<${logicalIdOf(step)}.Arn>:*]`,
        reason: 'LambdaInvoke may invoke any version or alias of this step function, and nothing else',
      });
    }
    return stateMachine;
  }

  /** A LambdaInvoke of a shared step: raw payload in and out, transient errors retried. */
  private task(scope: Construct, step: StepName, options: { resultPath?: string } = {}): tasks.LambdaInvoke {
    const task = new tasks.LambdaInvoke(scope, step, {
      stateName: step,
      lambdaFunction: this.steps[step],
      payloadResponseOnly: true,
      retryOnServiceExceptions: false,
      resultPath: options.resultPath ?? sfn.JsonPath.DISCARD,
    });
    task.addRetry({
      errors: [...transientErrors],
      maxAttempts: 3,
      interval: Duration.seconds(2),
      backoffRate: 2,
      maxDelay: Duration.seconds(30),
      jitterStrategy: sfn.JitterType.FULL,
    });
    return task;
  }

  /** The end of every failure: FailOperation records the error at `$.error`, then the execution fails with it. */
  private failure(scope: Construct): sfn.IChainable {
    const failed = new sfn.Fail(scope, stateNames.failed, {
      stateName: stateNames.failed,
      errorPath: `${paths.error}.Error`,
      causePath: `${paths.error}.Cause`,
    });
    return this.task(scope, 'FailOperation').next(failed);
  }

  /**
   * BeginOperation → EnsureInstance → (WaitForInstance → CheckInstance → IsInstanceReady)* → CompleteOperation.
   * Any failure, or no health after `maxHealthChecks`, runs the cleanup: RemoveInstance → FailOperation → Failed.
   */
  private provision(scope: Construct): sfn.IChainable {
    const failure = this.failure(scope);
    const remove = this.task(scope, 'RemoveInstance');
    // Keep the original error at $.error for FailOperation; a failing cleanup is recorded beside it.
    remove.addCatch(failure, { errors: [sfn.Errors.ALL], resultPath: paths.cleanupError });
    const cleanup = remove.next(failure);

    const begin = this.task(scope, 'BeginOperation');
    const ensure = this.task(scope, 'EnsureInstance');
    const check = this.task(scope, 'CheckInstance', { resultPath: paths.health });
    const complete = this.task(scope, 'CompleteOperation');
    for (const task of [begin, ensure, check, complete]) {
      task.addCatch(cleanup, { errors: [sfn.Errors.ALL], resultPath: paths.error });
    }

    const wait = new sfn.Wait(scope, stateNames.waitForInstance, {
      stateName: stateNames.waitForInstance,
      time: sfn.WaitTime.duration(Duration.seconds(healthCheckIntervalSeconds)),
    });
    const notHealthy = new sfn.Pass(scope, stateNames.instanceNotHealthy, {
      stateName: stateNames.instanceNotHealthy,
      result: sfn.Result.fromObject(instanceNotHealthyError),
      resultPath: paths.error,
    });
    const isReady = new sfn.Choice(scope, stateNames.isInstanceReady, { stateName: stateNames.isInstanceReady })
      .when(sfn.Condition.booleanEquals(paths.healthReady, true), complete.next(new sfn.Succeed(scope, stateNames.succeeded, { stateName: stateNames.succeeded })))
      .when(sfn.Condition.numberGreaterThanEquals(paths.healthAttempts, maxHealthChecks), notHealthy.next(cleanup))
      .otherwise(wait);

    return begin.next(ensure).next(wait).next(check).next(isReady);
  }

  /** BeginOperation → RemoveInstance → CompleteOperation; any failure: FailOperation → Failed. */
  private deprovision(scope: Construct): sfn.IChainable {
    const failure = this.failure(scope);
    const begin = this.task(scope, 'BeginOperation');
    const remove = this.task(scope, 'RemoveInstance');
    const complete = this.task(scope, 'CompleteOperation');
    for (const task of [begin, remove, complete]) {
      task.addCatch(failure, { errors: [sfn.Errors.ALL], resultPath: paths.error });
    }
    return begin.next(remove).next(complete).next(new sfn.Succeed(scope, stateNames.succeeded, { stateName: stateNames.succeeded }));
  }
}
