import { type App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { logicalIdOf } from './function.ts';
import type { DbplaneStack } from './stack.ts';

/** Runs the AWS Solutions rules on every synthesis of `app`: a violation that is not acknowledged fails it. */
export function addNagChecks(app: App): void {
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
}

/**
 * Findings that every function's table grant produces, acknowledged once on the stack by their exact
 * finding id (each names one key or one table, never a blanket rule). Findings tied to one construct are
 * acknowledged where that construct is made (function.ts, workflows.ts, api.ts, agent.ts).
 */
export function acknowledgeNagFindings(stack: DbplaneStack): void {
  const table = logicalIdOf(stack.storage.table);
  Validations.of(stack).acknowledge({
    id: `AwsSolutions-IAM5[Resource::<${table}.Arn>/index/*]`,
    reason: 'handlers query the table through its indexes (gsi1, gsi2); the wildcard covers only this table\'s indexes',
  });
  Validations.of(stack).acknowledge({
    id: 'AwsSolutions-IAM5[Action::kms:GenerateDataKey*]',
    reason: 'DynamoDB encryption with the customer-managed master key needs the GenerateDataKey variants; the statement names only that key',
  });
  Validations.of(stack).acknowledge({
    id: 'AwsSolutions-IAM5[Action::kms:ReEncrypt*]',
    reason: 'granted by the table grant for the customer-managed master key; the statement names only that key',
  });
}
