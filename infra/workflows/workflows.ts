import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { envNames, type WorkflowName } from '../../functions/core/config.ts';
import { DbplaneFunction, logicalIdOf, type SharedResources } from '../function.ts';
import {
  paths,
  type PollSpec,
  polls,
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
          keyAccess: name === 'CreateDataKey',
          // It is granted the workflows it starts below; the steps those workflows invoke must not share that grant (a cycle).
          ownRole: name === 'StartMaintenanceOperation',
          timeout: Duration.seconds(60),
          description: `workflow step ${name}`,
        }),
      ]),
    ) as Record<StepName, DbplaneFunction>;

    const timeout = props.executionTimeout ?? Duration.hours(2);
    this.stateMachines = {
      Provision: this.stateMachine('Provision', timeout, (scope) => this.provision(scope)),
      Deprovision: this.stateMachine('Deprovision', timeout, (scope) => this.deprovision(scope)),
      Backup: this.stateMachine('Backup', timeout, (scope) => this.backup(scope)),
      Restore: this.stateMachine('Restore', timeout, (scope) => this.restore(scope)),
      RestoreDrill: this.stateMachine('RestoreDrill', timeout, (scope) => this.restoreDrill(scope)),
      ChangePlan: this.stateMachine('ChangePlan', timeout, (scope) => this.changePlan(scope)),
      Upgrade: this.stateMachine('Upgrade', timeout, (scope) => this.upgrade(scope)),
      Maintenance: this.stateMachine('Maintenance', timeout, (scope) => this.maintenance(scope)),
      Restart: this.stateMachine('Restart', timeout, (scope) => this.restart(scope)),
    };
    // A maintenance item starts the operation it runs as the API does: it needs those state machines.
    for (const workflow of ['ChangePlan', 'Upgrade', 'Restart'] as const) {
      this.steps.StartMaintenanceOperation.addEnvironment(envNames.stateMachineArn(workflow), this.stateMachines[workflow].stateMachineArn);
      this.stateMachines[workflow].grantStartExecution(this.steps.StartMaintenanceOperation);
    }
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

  /**
   * A LambdaInvoke of a shared step: raw payload in and out, transient errors retried. `stateName`: where one
   * machine runs a step in two places. `retryAll`: any error is retried once more (a path that can only go forward).
   */
  private task(scope: Construct, step: StepName, options: { resultPath?: string; stateName?: string; retryAll?: boolean } = {}): tasks.LambdaInvoke {
    const task = new tasks.LambdaInvoke(scope, options.stateName ?? step, {
      stateName: options.stateName ?? step,
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
    if (options.retryAll) task.addRetry({ errors: [sfn.Errors.ALL], maxAttempts: 2, interval: Duration.seconds(2), backoffRate: 2 });
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
   * A bounded poll: Wait → Check → Choice, again until the check answers `ready` (→ `onReady`) or has
   * run `spec.maxChecks` times (the spec's timeout error at `$.error` → `onTimeout`). Failures of the
   * check go to `onError`. Returns the Wait, where the poll starts. `checkState` and `retryAll` as in `task`.
   */
  private poll(
    scope: Construct,
    names: { wait: string; check: StepName; checkState?: string; choice: string; timedOut: string },
    spec: PollSpec,
    resultPath: string,
    next: { onReady: sfn.IChainable; onTimeout: sfn.IChainable; onError: sfn.IChainable },
    { retryAll = false } = {},
  ): sfn.Wait {
    const wait = new sfn.Wait(scope, names.wait, {
      stateName: names.wait,
      time: sfn.WaitTime.duration(Duration.seconds(spec.intervalSeconds)),
    });
    const check = this.task(scope, names.check, { resultPath, stateName: names.checkState, retryAll });
    check.addCatch(next.onError, { errors: [sfn.Errors.ALL], resultPath: paths.error });
    const timedOut = new sfn.Pass(scope, names.timedOut, {
      stateName: names.timedOut,
      result: sfn.Result.fromObject(spec.timeoutError),
      resultPath: paths.error,
    });
    const choice = new sfn.Choice(scope, names.choice, { stateName: names.choice })
      .when(sfn.Condition.booleanEquals(`${resultPath}.ready`, true), next.onReady)
      .when(sfn.Condition.numberGreaterThanEquals(`${resultPath}.attempts`, spec.maxChecks), timedOut.next(next.onTimeout))
      .otherwise(wait);
    wait.next(check).next(choice);
    return wait;
  }

  /**
   * A wait whose failure (a failed server, or not ready in time) goes to `onFailure`: `health` polls
   * CheckInstance (at `$.health`) until the server runs; `replica` polls CheckReplica until a 2-node plan's
   * replica has replayed all the primary's WAL (at once on a 1-node plan).
   */
  private waitFor(scope: Construct, what: 'health' | 'replica', onReady: sfn.IChainable, onFailure: sfn.IChainable): sfn.Wait {
    const waits = {
      health: {
        states: { wait: stateNames.waitForInstance, check: 'CheckInstance', choice: stateNames.isInstanceReady, timedOut: stateNames.instanceNotHealthy },
        spec: polls.instance,
        path: paths.health,
      },
      replica: {
        states: { wait: stateNames.waitForReplica, check: 'CheckReplica', choice: stateNames.isReplicaCaughtUp, timedOut: stateNames.replicaNotCaughtUp },
        spec: polls.replica,
        path: paths.replicaProgress,
      },
    } as const;
    const { states, spec, path } = waits[what];
    return this.poll(scope, states, spec, path, { onReady, onTimeout: onFailure, onError: onFailure });
  }

  /**
   * A cleanup step, then `failure`. The original error stays at `$.error` for FailOperation; a failing
   * cleanup is recorded beside it, at `$.cleanupError`, and goes to `failure` too.
   */
  private cleanupThen(scope: Construct, step: StepName, failure: sfn.IChainable, resultPath?: string): sfn.IChainable {
    const task = this.task(scope, step, { resultPath });
    task.addCatch(failure, { errors: [sfn.Errors.ALL], resultPath: paths.cleanupError });
    return task.next(failure);
  }

  private succeed(scope: Construct): sfn.Succeed {
    return new sfn.Succeed(scope, stateNames.succeeded, { stateName: stateNames.succeeded });
  }

  /** Tasks in sequence, each sending any error to `onError` (at `$.error`). */
  private sequence(scope: Construct, names: StepName[], onError: sfn.IChainable): tasks.LambdaInvoke[] {
    return names.map((name) => this.task(scope, name).addCatch(onError, { errors: [sfn.Errors.ALL], resultPath: paths.error }) as tasks.LambdaInvoke);
  }

  /**
   * BeginOperation → CreateDataKey → EnsureInstance → poll CheckInstance → AddReplica (only on a 2-node
   * plan) → poll CheckReplica → CompleteOperation.
   * Any failure, or no health after `polls.instance.maxChecks`, runs the cleanup: RemoveInstance → FailOperation → Failed.
   */
  private provision(scope: Construct): sfn.IChainable {
    const failure = this.failure(scope);
    const cleanup = this.cleanupThen(scope, 'RemoveInstance', failure);

    const [begin, createKey, ensure, addReplica, complete] = this.sequence(
      scope, ['BeginOperation', 'CreateDataKey', 'EnsureInstance', 'AddReplica', 'CompleteOperation'], cleanup,
    );
    const waitForReplica = this.waitFor(scope, 'replica', complete.next(this.succeed(scope)), cleanup);
    return begin.next(createKey).next(ensure).next(this.waitFor(scope, 'health', addReplica.next(waitForReplica), cleanup));
  }

  /** BeginOperation → RemoveInstance → PurgeBackups (only with `purge`) → CompleteOperation; any failure: FailOperation → Failed. */
  private deprovision(scope: Construct): sfn.IChainable {
    const [begin, remove, purge, complete] = this.sequence(scope, ['BeginOperation', 'RemoveInstance', 'PurgeBackups', 'CompleteOperation'], this.failure(scope));
    return begin.next(remove).next(purge).next(complete).next(this.succeed(scope));
  }

  /** BeginOperation → StartBackup → poll CheckBackup → CompleteOperation; any failure: FailOperation (the backup recorded failed) → Failed. */
  private backup(scope: Construct): sfn.IChainable {
    const failure = this.failure(scope);
    const [begin, start, complete] = this.sequence(scope, ['BeginOperation', 'StartBackup', 'CompleteOperation'], failure);
    const waitForBackup = this.poll(
      scope,
      { wait: stateNames.waitForBackup, check: 'CheckBackup', choice: stateNames.isBackupDone, timedOut: stateNames.backupTimedOut },
      polls.backup,
      paths.backupProgress,
      { onReady: complete.next(this.succeed(scope)), onTimeout: failure, onError: failure },
    );
    return begin.next(start).next(waitForBackup);
  }

  /**
   * BeginOperation → CreateDataKey (a new database's own key) → StartBackup (the undo backup of a restore
   * in place) → poll CheckBackup → StartRestore → poll CheckRestore → CompleteOperation. Any failure:
   * AbandonRestore (removes a new database's server; in place, the host already put the old data back) →
   * FailOperation → Failed.
   */
  private restore(scope: Construct): sfn.IChainable {
    const failure = this.failure(scope);
    const cleanup = this.cleanupThen(scope, 'AbandonRestore', failure);

    const [begin, createKey, startBackup, startRestore, complete] = this.sequence(
      scope, ['BeginOperation', 'CreateDataKey', 'StartBackup', 'StartRestore', 'CompleteOperation'], cleanup,
    );
    const waitForRestore = this.poll(
      scope,
      { wait: stateNames.waitForRestore, check: 'CheckRestore', choice: stateNames.isRestoreDone, timedOut: stateNames.restoreTimedOut },
      polls.restore,
      paths.restoreProgress,
      { onReady: complete.next(this.succeed(scope)), onTimeout: cleanup, onError: cleanup },
    );
    const waitForUndoBackup = this.poll(
      scope,
      { wait: stateNames.waitForBackup, check: 'CheckBackup', choice: stateNames.isBackupDone, timedOut: stateNames.backupTimedOut },
      polls.backup,
      paths.backupProgress,
      { onReady: startRestore.next(waitForRestore), onTimeout: cleanup, onError: cleanup },
    );
    return begin.next(createKey).next(startBackup).next(waitForUndoBackup);
  }

  /**
   * BeginOperation → StartDrill → poll CheckRestore → VerifyDrill → RemoveScratch → CompleteOperation.
   * Any failure also goes through RemoveScratch (one state for both paths), then FailOperation → Failed.
   * A drill holds no lock: it reads the database's backups and never touches the database.
   */
  private restoreDrill(scope: Construct): sfn.IChainable {
    const failure = this.failure(scope);
    const complete = this.task(scope, 'CompleteOperation');
    complete.addCatch(failure, { errors: [sfn.Errors.ALL], resultPath: paths.error });
    const removeScratch = this.task(scope, 'RemoveScratch').addCatch(failure, { errors: [sfn.Errors.ALL], resultPath: paths.cleanupError });
    const failed = sfn.Condition.or(sfn.Condition.isPresent(paths.error), sfn.Condition.isPresent(paths.cleanupError));
    removeScratch.next(new sfn.Choice(scope, stateNames.drillFailed, { stateName: stateNames.drillFailed })
      .when(failed, failure)
      .otherwise(complete.next(this.succeed(scope))));

    const [begin, start, verify] = this.sequence(scope, ['BeginOperation', 'StartDrill', 'VerifyDrill'], removeScratch);
    const waitForRestore = this.poll(
      scope,
      { wait: stateNames.waitForRestore, check: 'CheckRestore', choice: stateNames.isRestoreDone, timedOut: stateNames.restoreTimedOut },
      polls.restore,
      paths.restoreProgress,
      { onReady: verify.next(removeScratch), onTimeout: removeScratch, onError: removeScratch },
    );
    return begin.next(start).next(waitForRestore);
  }

  /**
   * BeginOperation → PrecheckPlan (usage against the live server) → RemoveReplica (only to a 1-node plan)
   * → ResizeReplica and Switchover (only between 2-node plans: the replica restarts on the target settings
   * and becomes the primary, the old primary its replica) → ResizeInstance (restart on the target plan's
   * settings where a server still runs others; same endpoint) → poll CheckInstance → AddReplica
   * (only to a 2-node plan) → poll CheckReplica until the replica has replayed all the primary's WAL →
   * VerifyPlan → CompleteOperation (the plan of record changes only here). Any failure, or no health or
   * catch-up in time: RevertPlan (the previous plan's settings and node count, waited for until healthy)
   * → FailOperation (`rolled_back`) → Failed.
   */
  private changePlan(scope: Construct): sfn.IChainable {
    const failure = this.failure(scope);
    // A failed revert keeps the original error at $.error; FailOperation then ends the operation `failed`.
    const rollback = this.cleanupThen(scope, 'RevertPlan', failure);

    const [begin, precheck, removeReplica, resizeReplica, switchover, resize, addReplica, verify, complete] = this.sequence(
      scope,
      ['BeginOperation', 'PrecheckPlan', 'RemoveReplica', 'ResizeReplica', 'Switchover', 'ResizeInstance', 'AddReplica', 'VerifyPlan', 'CompleteOperation'],
      rollback,
    );
    const waitForReplica = this.waitFor(scope, 'replica', verify.next(complete).next(this.succeed(scope)), rollback);
    return begin.next(precheck).next(removeReplica).next(resizeReplica).next(switchover).next(resize)
      .next(this.waitFor(scope, 'health', addReplica.next(waitForReplica), rollback));
  }

  /**
   * BeginOperation → PrecheckUpgrade (blocking checks on the live server; the strategy and every user table's row
   * count at `$.precheck`) → IsMajorUpgrade:
   * - a minor upgrade: UpgradeReplica and Switchover (only on 2 nodes: the replica restarts on the new binaries and
   *   becomes the primary) → UpgradeInstance (every server not yet on the target version restarts on it) → poll
   *   CheckInstance → poll CheckReplica → VerifyUpgrade (the version the server reports, the tables) →
   *   CompleteOperation (the version of record changes only here). Any failure: RevertUpgrade (the previous version,
   *   waited for until healthy) → FailOperation (`rolled_back`) → Failed.
   * - a major upgrade (blue/green): StartBlueGreen (a new server beside the old one, subscribed) → poll CheckBlueGreen
   *   until it has caught up → Cutover (clients held; row counts compared on both servers: a difference keeps them on
   *   the old one). A failure up to here: AbandonBlueGreen (the new server goes; the database never left the old one)
   *   → FailOperation (`rolled_back`). After the cutover the database runs on the new major, the old server following
   *   it (a logical subscriber), each step retried once more on any error: poll CheckNewReplica (2 nodes: the replica
   *   copied afresh) → VerifyMajorUpgrade → CompleteMajorUpgrade (which first stops the old server, its folder kept: see
   *   the agent's retiredKeepDays). A failure there: RollBackBlueGreen (clients back on the old server with every write
   *   made since; `$.cutover` cleared) → FailOperation (`rolled_back`); a rollback that fails ends it `failed` on the new
   *   version.
   */
  private upgrade(scope: Construct): sfn.IChainable {
    const failure = this.failure(scope);
    const rollback = this.cleanupThen(scope, 'RevertUpgrade', failure);
    const abandon = this.cleanupThen(scope, 'AbandonBlueGreen', failure);
    const rollBack = this.cleanupThen(scope, 'RollBackBlueGreen', failure, paths.cutover);
    const catchInto = <T extends tasks.LambdaInvoke>(task: T, handler: sfn.IChainable) => task.addCatch(handler, { errors: [sfn.Errors.ALL], resultPath: paths.error }) as T;

    const [begin, upgradeReplica, switchover, upgrade, verify, complete] = this.sequence(
      scope, ['BeginOperation', 'UpgradeReplica', 'Switchover', 'UpgradeInstance', 'VerifyUpgrade', 'CompleteOperation'], rollback,
    );
    const precheck = catchInto(this.task(scope, 'PrecheckUpgrade', { resultPath: paths.precheck }), rollback);
    const succeeded = this.succeed(scope);
    const waitForReplica = this.waitFor(scope, 'replica', verify.next(complete).next(succeeded), rollback);
    const minor = upgradeReplica.next(switchover).next(upgrade).next(this.waitFor(scope, 'health', waitForReplica, rollback));

    const startBlueGreen = catchInto(this.task(scope, 'StartBlueGreen'), abandon);
    const cutover = catchInto(this.task(scope, 'Cutover', { resultPath: paths.cutover }), abandon);
    const forward = { retryAll: true };
    const verifyMajor = catchInto(this.task(scope, 'VerifyUpgrade', { stateName: stateNames.verifyMajorUpgrade, ...forward }), rollBack);
    const completeMajor = catchInto(this.task(scope, 'CompleteOperation', { stateName: stateNames.completeMajorUpgrade, ...forward }), rollBack);
    const waitForNewReplica = this.poll(
      scope,
      { wait: stateNames.waitForNewReplica, check: 'CheckReplica', checkState: stateNames.checkNewReplica, choice: stateNames.isNewReplicaCaughtUp, timedOut: stateNames.newReplicaNotCaughtUp },
      polls.replica,
      paths.replicaProgress,
      { onReady: verifyMajor.next(completeMajor).next(succeeded), onTimeout: rollBack, onError: rollBack },
      forward,
    );
    const waitForBlueGreen = this.poll(
      scope,
      { wait: stateNames.waitForBlueGreen, check: 'CheckBlueGreen', choice: stateNames.isBlueGreenReady, timedOut: stateNames.blueGreenNotReady },
      polls.blueGreen,
      paths.blueGreenProgress,
      { onReady: cutover.next(waitForNewReplica), onTimeout: abandon, onError: abandon },
    );
    const major = startBlueGreen.next(waitForBlueGreen);

    return begin.next(precheck).next(new sfn.Choice(scope, stateNames.isMajorUpgrade, { stateName: stateNames.isMajorUpgrade })
      .when(sfn.Condition.stringEquals(paths.precheckStrategy, 'logical'), major)
      .otherwise(minor));
  }

  /**
   * A maintenance item (input `{ maintenanceId, databaseId }`): StartMaintenanceOperation (first the window again at
   * the dispatcher's clock: open, not frozen, long enough for the kind's p95; then the change_plan or upgrade
   * operation, started as the API starts it) → poll CheckMaintenanceOperation until the operation finished →
   * EndMaintenance: `done`, or `failed` with the operation's reason (the operation rolled itself back), or back to
   * `queued` when the window no longer allowed the start or another operation held the database. Every error goes
   * to EndMaintenance at `$.error`; a `failed` item fails the execution.
   */
  private maintenance(scope: Construct): sfn.IChainable {
    const end = this.task(scope, 'EndMaintenance', { resultPath: paths.maintenanceEnded });
    end.next(new sfn.Choice(scope, stateNames.isMaintenanceFailed, { stateName: stateNames.isMaintenanceFailed })
      .when(sfn.Condition.stringEquals(`${paths.maintenanceEnded}.status`, 'failed'), new sfn.Fail(scope, stateNames.failed, {
        stateName: stateNames.failed, error: 'MaintenanceFailed', causePath: `${paths.maintenanceEnded}.reason`,
      }))
      .otherwise(this.succeed(scope)));
    const start = this.task(scope, 'StartMaintenanceOperation').addCatch(end, { errors: [sfn.Errors.ALL], resultPath: paths.error });
    const waitForOperation = this.poll(
      scope,
      {
        wait: stateNames.waitForMaintenanceOperation,
        check: 'CheckMaintenanceOperation',
        choice: stateNames.isMaintenanceOperationDone,
        timedOut: stateNames.maintenanceOperationTimedOut,
      },
      polls.maintenanceOperation,
      paths.operationProgress,
      { onReady: end, onTimeout: end, onError: end },
    );
    return start.next(waitForOperation);
  }

  /**
   * A restart to apply settings (run by maintenance; input `{fromPlan, toPlan}`, both the database's plan): BeginOperation
   * → RestartReplica and Switchover (only on 2 nodes: the replica restarts on the plan's settings and becomes the
   * primary) → RestartInstance (every server not on them restarts, new connections held; same endpoint) → poll
   * CheckInstance → poll CheckReplica → VerifyPlan (the server reads back every setting) → CompleteOperation. The
   * steps are the plan change's. Any failure: RevertPlan (the plan's settings, waited for until healthy) → FailOperation
   * (`rolled_back`) → Failed.
   */
  private restart(scope: Construct): sfn.IChainable {
    const rollback = this.cleanupThen(scope, 'RevertPlan', this.failure(scope));
    const [begin, restartReplica, switchover, restartInstance, verify, complete] = this.sequence(
      scope, ['BeginOperation', 'RestartReplica', 'Switchover', 'RestartInstance', 'VerifyPlan', 'CompleteOperation'], rollback,
    );
    const waitForReplica = this.waitFor(scope, 'replica', verify.next(complete).next(this.succeed(scope)), rollback);
    return begin.next(restartReplica).next(switchover).next(restartInstance).next(this.waitFor(scope, 'health', waitForReplica, rollback));
  }
}
