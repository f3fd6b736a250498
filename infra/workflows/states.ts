/**
 * State names of the workflows, and what the step handlers exchange with them. Infra builds the state
 * machines from these; tests and the local runtime refer to states by the same names.
 */
export const stateNames = {
  beginOperation: 'BeginOperation',
  createDataKey: 'CreateDataKey',
  ensureInstance: 'EnsureInstance',
  waitForInstance: 'WaitForInstance',
  checkInstance: 'CheckInstance',
  isInstanceReady: 'IsInstanceReady',
  instanceNotHealthy: 'InstanceNotHealthy',
  removeInstance: 'RemoveInstance',
  purgeBackups: 'PurgeBackups',
  startBackup: 'StartBackup',
  waitForBackup: 'WaitForBackup',
  checkBackup: 'CheckBackup',
  isBackupDone: 'IsBackupDone',
  backupTimedOut: 'BackupTimedOut',
  startRestore: 'StartRestore',
  waitForRestore: 'WaitForRestore',
  checkRestore: 'CheckRestore',
  isRestoreDone: 'IsRestoreDone',
  restoreTimedOut: 'RestoreTimedOut',
  abandonRestore: 'AbandonRestore',
  startDrill: 'StartDrill',
  verifyDrill: 'VerifyDrill',
  removeScratch: 'RemoveScratch',
  drillFailed: 'DrillFailed',
  precheckPlan: 'PrecheckPlan',
  resizeInstance: 'ResizeInstance',
  verifyPlan: 'VerifyPlan',
  revertPlan: 'RevertPlan',
  removeReplica: 'RemoveReplica',
  resizeReplica: 'ResizeReplica',
  switchover: 'Switchover',
  precheckUpgrade: 'PrecheckUpgrade',
  upgradeReplica: 'UpgradeReplica',
  upgradeInstance: 'UpgradeInstance',
  verifyUpgrade: 'VerifyUpgrade',
  revertUpgrade: 'RevertUpgrade',
  isMajorUpgrade: 'IsMajorUpgrade',
  startBlueGreen: 'StartBlueGreen',
  waitForBlueGreen: 'WaitForBlueGreen',
  checkBlueGreen: 'CheckBlueGreen',
  isBlueGreenReady: 'IsBlueGreenReady',
  blueGreenNotReady: 'BlueGreenNotReady',
  cutover: 'Cutover',
  abandonBlueGreen: 'AbandonBlueGreen',
  /** After the cutover the major path has states of its own (see Workflows.upgrade); a failure there rolls back. */
  rollBackBlueGreen: 'RollBackBlueGreen',
  waitForNewReplica: 'WaitForNewReplica',
  checkNewReplica: 'CheckNewReplica',
  isNewReplicaCaughtUp: 'IsNewReplicaCaughtUp',
  newReplicaNotCaughtUp: 'NewReplicaNotCaughtUp',
  verifyMajorUpgrade: 'VerifyMajorUpgrade',
  completeMajorUpgrade: 'CompleteMajorUpgrade',
  addReplica: 'AddReplica',
  waitForReplica: 'WaitForReplica',
  checkReplica: 'CheckReplica',
  isReplicaCaughtUp: 'IsReplicaCaughtUp',
  replicaNotCaughtUp: 'ReplicaNotCaughtUp',
  completeOperation: 'CompleteOperation',
  failOperation: 'FailOperation',
  startMaintenanceOperation: 'StartMaintenanceOperation',
  waitForMaintenanceOperation: 'WaitForMaintenanceOperation',
  checkMaintenanceOperation: 'CheckMaintenanceOperation',
  isMaintenanceOperationDone: 'IsMaintenanceOperationDone',
  maintenanceOperationTimedOut: 'MaintenanceOperationTimedOut',
  endMaintenance: 'EndMaintenance',
  isMaintenanceFailed: 'IsMaintenanceFailed',
  restartReplica: 'RestartReplica',
  restartInstance: 'RestartInstance',
  succeeded: 'Succeeded',
  failed: 'Failed',
} as const;
export type StateName = (typeof stateNames)[keyof typeof stateNames];

/** The step Lambdas: one per step, shared by every state machine that uses it. */
export const steps = {
  BeginOperation: 'functions/steps/begin-operation.ts',
  CreateDataKey: 'functions/steps/create-data-key.ts',
  EnsureInstance: 'functions/steps/ensure-instance.ts',
  CheckInstance: 'functions/steps/check-instance.ts',
  RemoveInstance: 'functions/steps/remove-instance.ts',
  PurgeBackups: 'functions/steps/purge-backups.ts',
  StartBackup: 'functions/steps/start-backup.ts',
  CheckBackup: 'functions/steps/check-backup.ts',
  StartRestore: 'functions/steps/start-restore.ts',
  CheckRestore: 'functions/steps/check-restore.ts',
  AbandonRestore: 'functions/steps/abandon-restore.ts',
  StartDrill: 'functions/steps/start-drill.ts',
  VerifyDrill: 'functions/steps/verify-drill.ts',
  RemoveScratch: 'functions/steps/remove-scratch.ts',
  PrecheckPlan: 'functions/steps/precheck-plan.ts',
  ResizeInstance: 'functions/steps/resize-instance.ts',
  VerifyPlan: 'functions/steps/verify-plan.ts',
  RevertPlan: 'functions/steps/revert-plan.ts',
  RemoveReplica: 'functions/steps/remove-replica.ts',
  ResizeReplica: 'functions/steps/resize-replica.ts',
  Switchover: 'functions/steps/switchover.ts',
  PrecheckUpgrade: 'functions/steps/precheck-upgrade.ts',
  UpgradeReplica: 'functions/steps/upgrade-replica.ts',
  UpgradeInstance: 'functions/steps/upgrade-instance.ts',
  VerifyUpgrade: 'functions/steps/verify-upgrade.ts',
  RevertUpgrade: 'functions/steps/revert-upgrade.ts',
  StartBlueGreen: 'functions/steps/start-blue-green.ts',
  CheckBlueGreen: 'functions/steps/check-blue-green.ts',
  Cutover: 'functions/steps/cutover.ts',
  AbandonBlueGreen: 'functions/steps/abandon-blue-green.ts',
  RollBackBlueGreen: 'functions/steps/roll-back-blue-green.ts',
  AddReplica: 'functions/steps/add-replica.ts',
  CheckReplica: 'functions/steps/check-replica.ts',
  CompleteOperation: 'functions/steps/complete-operation.ts',
  FailOperation: 'functions/steps/fail-operation.ts',
  StartMaintenanceOperation: 'functions/steps/start-maintenance-operation.ts',
  CheckMaintenanceOperation: 'functions/steps/check-maintenance-operation.ts',
  EndMaintenance: 'functions/steps/end-maintenance.ts',
  RestartReplica: 'functions/steps/restart-replica.ts',
  RestartInstance: 'functions/steps/restart-instance.ts',
} as const satisfies Partial<Record<StateName, string>>;
export type StepName = keyof typeof steps;
/** Every step module exports its handler under this name. */
export const stepHandlerExport = 'handler';

/** JSONPath locations in the execution state. */
export const paths = {
  /** CheckInstance's result: `{ ready: boolean, attempts: number }`. */
  health: '$.health',
  healthReady: '$.health.ready',
  healthAttempts: '$.health.attempts',
  /** CheckBackup's and CheckRestore's results, like `health`. */
  backupProgress: '$.backupProgress',
  restoreProgress: '$.restoreProgress',
  /** CheckReplica's result, like `health`. */
  replicaProgress: '$.replicaProgress',
  /** CheckMaintenanceOperation's result, like `health`: the operation a maintenance item started. */
  operationProgress: '$.operationProgress',
  /** EndMaintenance's result: the item's status and reason. */
  maintenanceEnded: '$.ended',
  /** PrecheckUpgrade's result: the strategy (which path the upgrade takes) and every user table's row count, which VerifyUpgrade reads. */
  precheck: '$.precheck',
  precheckStrategy: '$.precheck.strategy',
  /** CheckBlueGreen's result, like `health`. */
  blueGreenProgress: '$.blueGreenProgress',
  /** What the cutover checked; once present, the database runs on the new major (see failOperation). */
  cutover: '$.cutover',
  /** The caught error, `{ Error, Cause }`, which FailOperation reads. */
  error: '$.error',
  /** An error of the cleanup itself (RemoveInstance during Provision's cleanup), kept apart from `$.error`. */
  cleanupError: '$.cleanupError',
} as const;

/** A bounded poll: one check per `intervalSeconds`, at most `maxChecks`, then `timeoutError`. */
export interface PollSpec {
  readonly intervalSeconds: number;
  readonly maxChecks: number;
  readonly timeoutError: { readonly Error: string; readonly Cause: string };
}

export const polls = {
  /** Until a new server is healthy (Provision). */
  instance: { intervalSeconds: 1, maxChecks: 120, timeoutError: { Error: 'InstanceNotHealthy', Cause: 'the server did not become healthy in time' } },
  /**
   * Until a base backup is stored in every zone: up to 2 hours. No pause between checks: each check
   * waits on the agent until the job ends or 20 s pass (long poll, maxJobWaitSeconds), so 360 checks
   * make 2 hours (and ~3,300 history events, far under 25,000).
   */
  backup: { intervalSeconds: 0, maxChecks: 360, timeoutError: { Error: 'BackupTimedOut', Cause: 'the backup did not finish within 2 hours' } },
  /** Until a restore has recovered and been verified: up to 2 hours, polled like `backup`. */
  restore: { intervalSeconds: 0, maxChecks: 360, timeoutError: { Error: 'RestoreTimedOut', Cause: 'the restore did not finish within 2 hours' } },
  /** Until a blue/green upgrade's new server has copied every table and caught up: up to 100 minutes, polled like `backup`. */
  blueGreen: { intervalSeconds: 0, maxChecks: 300, timeoutError: { Error: 'BlueGreenNotReady', Cause: 'the new server did not catch up within 100 minutes' } },
  /** Until a new replica runs and has replayed all the primary's WAL: up to 30 minutes, polled like `backup`. */
  replica: { intervalSeconds: 0, maxChecks: 90, timeoutError: { Error: 'ReplicaNotCaughtUp', Cause: 'the replica did not catch up with the primary within 30 minutes' } },
  /**
   * Until the operation a maintenance item started has finished: up to 110 minutes, inside the execution's 2 hours
   * (the operation bounds itself and rolls back on its own; the item then ends `failed`).
   */
  maintenanceOperation: {
    intervalSeconds: 10, maxChecks: 660, timeoutError: { Error: 'MaintenanceOperationTimedOut', Cause: 'the operation did not finish within 110 minutes' },
  },
} as const satisfies Record<string, PollSpec>;

/** Errors retried on every step: Lambda's transient failures and the agent being unreachable. */
export const transientErrors = [
  'Lambda.ServiceException',
  'Lambda.TooManyRequestsException',
  'Lambda.SdkClientException',
  'Lambda.ClientExecutionTimeoutException',
  'AgentUnavailable',
] as const;

/** The execution input every workflow takes. */
export interface ExecutionInput {
  operationId: string;
  databaseId: string;
}
