import { CfnParameter, Validations } from 'aws-cdk-lib';
import type * as kms from 'aws-cdk-lib/aws-kms';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';

/** Context key that sets the default of the `AgentUrl` parameter (`cdk synth -c dbplane:agentUrl=https://…`). */
export const agentUrlContextKey = 'dbplane:agentUrl';
export const defaultAgentUrl = 'https://agent.dbplane.internal:8443';

export interface AgentAccessProps {
  /** Encrypts the agent secret. */
  readonly key: kms.IKey;
}

/** How the control plane reaches the data plane: the agent's URL and the shared secret it authenticates with. */
export class AgentAccess extends Construct {
  /** The agent's base URL (a CfnParameter whose default comes from context `dbplane:agentUrl`). */
  readonly url: string;
  /** The bearer secret; handlers get its ARN (`AGENT_SECRET_ARN`) and read it at cold start. */
  readonly secret: secretsmanager.Secret;

  constructor(scope: Construct, id: string, props: AgentAccessProps) {
    super(scope, id);
    const defaultUrl = (this.node.tryGetContext(agentUrlContextKey) as string | undefined) ?? defaultAgentUrl;
    if (!/^https?:\/\/[^\s]+$/.test(defaultUrl)) throw new Error(`agent url must be an http(s) url, got '${defaultUrl}'`);
    const parameter = new CfnParameter(this, 'Url', {
      type: 'String',
      default: defaultUrl,
      description: 'Base URL of the dbplane agent API',
      allowedPattern: '^https?://\\S+$',
    });
    parameter.overrideLogicalId('AgentUrl');
    this.url = parameter.valueAsString;
    this.secret = new secretsmanager.Secret(this, 'Secret', {
      description: 'Bearer secret shared by the control plane and the dbplane agents',
      encryptionKey: props.key,
      generateSecretString: { passwordLength: 48, excludePunctuation: true },
    });
    Validations.of(this.secret).acknowledge({
      id: 'AwsSolutions-SMG4',
      reason: 'the agents on the database hosts hold the same secret: rotating it needs a coordinated agent rollout (an operator procedure), not a rotation Lambda',
    });
  }
}
