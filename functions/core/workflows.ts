import { ExecutionAlreadyExists, SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { config, type WorkflowName } from './config.ts';

export interface WorkflowInput {
  operationId: string;
  databaseId: string;
}

/** The Maintenance workflow's input: the maintenance item it runs. */
export interface MaintenanceInput {
  maintenanceId: string;
  databaseId: string;
}

/** Starts the state machine of a long operation; the execution is named after the operation, so a retry starts nothing new. */
export class Workflows {
  constructor(private readonly client = new SFNClient({})) {}

  async start(workflow: WorkflowName, input: WorkflowInput): Promise<string | undefined> {
    return this.run(workflow, input.operationId, input);
  }

  /** Named after the item and its dispatch (`name`), so a second dispatcher tick starts nothing new. */
  async startMaintenance(input: MaintenanceInput, name: string): Promise<string | undefined> {
    return this.run('Maintenance', name, input);
  }

  private async run(workflow: WorkflowName, name: string, input: WorkflowInput | MaintenanceInput): Promise<string | undefined> {
    try {
      const { executionArn } = await this.client.send(new StartExecutionCommand({
        stateMachineArn: config.stateMachineArn(workflow),
        name,
        input: JSON.stringify(input),
      }));
      return executionArn;
    } catch (error) {
      if (error instanceof ExecutionAlreadyExists) return undefined;
      throw error;
    }
  }
}
