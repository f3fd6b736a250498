import { ExecutionAlreadyExists, SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { config, type WorkflowName } from './config.ts';

export interface WorkflowInput {
  operationId: string;
  databaseId: string;
}

/** Starts the state machine of a long operation; the execution is named after the operation, so a retry starts nothing new. */
export class Workflows {
  constructor(private readonly client = new SFNClient({})) {}

  async start(workflow: WorkflowName, input: WorkflowInput): Promise<string | undefined> {
    try {
      const { executionArn } = await this.client.send(new StartExecutionCommand({
        stateMachineArn: config.stateMachineArn(workflow),
        name: input.operationId,
        input: JSON.stringify(input),
      }));
      return executionArn;
    } catch (error) {
      if (error instanceof ExecutionAlreadyExists) return undefined;
      throw error;
    }
  }
}
