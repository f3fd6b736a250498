/**
 * Configuration every handler reads from its environment: set by CDK on each Lambda, and by the local
 * runtime on its process. Names are defined here once.
 */

/** The long operations, one Standard state machine each. */
export const workflowNames = ['Provision', 'Deprovision', 'Backup', 'Restore', 'RestoreDrill', 'ChangePlan', 'Upgrade', 'Maintenance', 'Restart'] as const;
export type WorkflowName = (typeof workflowNames)[number];

export const envNames = {
  tableName: 'TABLE_NAME',
  eventBusName: 'EVENT_BUS_NAME',
  agentUrl: 'AGENT_URL',
  agentSecret: 'AGENT_SECRET',
  /** In AWS the agent secret lives in Secrets Manager; handlers get its ARN instead of its value. */
  agentSecretArn: 'AGENT_SECRET_ARN',
  stateMachineArn: (workflow: WorkflowName) => `STATE_MACHINE_ARN_${workflow.toUpperCase()}`,
  /** The operator's exceptions to the outbound URL guard (webhooks): see functions/core/outbound-url.ts. Unset: public HTTPS only. */
  outboundAllow: 'DBPLANE_OUTBOUND_ALLOW',
} as const;

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
}

export const config = {
  tableName: () => required(envNames.tableName),
  eventBusName: () => required(envNames.eventBusName),
  agentUrl: () => required(envNames.agentUrl),
  stateMachineArn: (workflow: WorkflowName) => required(envNames.stateMachineArn(workflow)),
};
