import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authorizer, fallbackRoute, routes } from '../functions/api/routes.ts';
import { envNames, workflowNames } from '../functions/core/config.ts';
import { tableDesign } from '../functions/core/table.ts';
import { eventRules } from '../functions/events/rules.ts';
import { schedules } from '../functions/schedules/schedules.ts';
import { entryMetadataKey, handlerMetadataKey } from '../infra/function.ts';
import { addNagChecks } from '../infra/nag.ts';
import { DbplaneStack, stackId } from '../infra/stack.ts';
import { steps } from '../infra/workflows/states.ts';
import { workflowMetadataKey } from '../infra/workflows/workflows.ts';
import { cdkJsonContext } from '../local/template.ts';

type Resource = { Type: string; Properties: Record<string, any>; Metadata?: Record<string, unknown> };

// Synthesized once for the whole file, bundling skipped, with cdk-nag's AWS Solutions rules.
let outdir: string;
let template: Template;
let resources: Record<string, Resource>;
let synthError: unknown;

beforeAll(() => {
  outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'dbplane-infra-test-'));
  const app = new App({ outdir, context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': [] } });
  const stack = new DbplaneStack(app, stackId);
  addNagChecks(app);
  try {
    const assembly = app.synth();
    const json = assembly.getStackArtifact(stack.artifactId).template as { Resources: Record<string, Resource> };
    template = Template.fromJSON(json);
    resources = json.Resources;
  } catch (error) {
    synthError = error;
  }
});

afterAll(() => {
  fs.rmSync(outdir, { recursive: true, force: true });
});

function ofType(type: string): Array<[string, Resource]> {
  return Object.entries(resources).filter(([, resource]) => resource.Type === type);
}

function lambdaFor(entry: string, handler: string): [string, Resource] {
  const found = ofType('AWS::Lambda::Function').filter(
    ([, fn]) => fn.Metadata?.[entryMetadataKey] === entry && fn.Metadata?.[handlerMetadataKey] === handler,
  );
  expect(found, `one Lambda for ${entry}#${handler}`).toHaveLength(1);
  return found[0];
}

describe('cdk-nag', () => {
  it('synthesizes with the AWS Solutions rules and no unacknowledged finding', () => {
    expect(synthError === undefined ? undefined : String((synthError as Error).message)).toBeUndefined();
    const report = JSON.parse(fs.readFileSync(path.join(outdir, 'validation-report.json'), 'utf8')) as {
      pluginReports: Array<{ pluginName: string; violations?: Array<{ ruleName: string; severity: string }> }>;
    };
    const findings = report.pluginReports.flatMap((plugin) => (plugin.violations ?? []).map((v) => `${v.severity} ${v.ruleName}`));
    expect(findings).toEqual([]);
  });
});

describe('storage', () => {
  it('creates the table from tableDesign: on-demand, PITR, KMS with the customer key, TTL, both GSIs', () => {
    const [[keyId]] = ofType('AWS::KMS::Key');
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      BillingMode: 'PAY_PER_REQUEST',
      KeySchema: [
        { AttributeName: tableDesign.partitionKey, KeyType: 'HASH' },
        { AttributeName: tableDesign.sortKey, KeyType: 'RANGE' },
      ],
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true, SSEType: 'KMS', KMSMasterKeyId: { 'Fn::GetAtt': [keyId, 'Arn'] } },
      TimeToLiveSpecification: { AttributeName: tableDesign.timeToLiveAttribute, Enabled: true },
      GlobalSecondaryIndexes: tableDesign.indexes.map((index) =>
        Match.objectLike({
          IndexName: index.name,
          KeySchema: [
            { AttributeName: index.partitionKey, KeyType: 'HASH' },
            { AttributeName: index.sortKey, KeyType: 'RANGE' },
          ],
        }),
      ),
    });
  });

  it('rotates the master key', () => {
    template.resourceCountIs('AWS::KMS::Key', 1);
    template.hasResourceProperties('AWS::KMS::Key', { EnableKeyRotation: true });
  });

  it('keeps backups in a versioned, private, TLS-only bucket encrypted with the master key', () => {
    template.hasResourceProperties('AWS::S3::Bucket', {
      VersioningConfiguration: { Status: 'Enabled' },
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
      BucketEncryption: { ServerSideEncryptionConfiguration: [Match.objectLike({ ServerSideEncryptionByDefault: Match.objectLike({ SSEAlgorithm: 'aws:kms' }) })] },
      LifecycleConfiguration: { Rules: Match.arrayWith([Match.objectLike({ NoncurrentVersionExpiration: { NoncurrentDays: 7 } })]) },
    });
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } })]) },
    });
  });

  it('gives only the CreateDataKey step the master key, to wrap new data keys', () => {
    const withKey = Object.values(template.findResources('AWS::Lambda::Function', {
      Properties: { Environment: { Variables: { MASTER_KEY_ID: Match.anyValue() } } },
    }));
    expect(withKey.map((r) => r.Metadata?.['dbplane:entry'])).toEqual(['functions/steps/create-data-key.ts']);
  });

  it('creates the dbplane event bus', () => {
    template.resourceCountIs('AWS::Events::EventBus', 1);
  });
});

describe('functions', () => {
  it("gives every Lambda arm64, the Node.js 24 runtime, the functions' log group with a retention, and the shared environment", () => {
    const [[tableId]] = ofType('AWS::DynamoDB::Table');
    const [[secretId]] = ofType('AWS::SecretsManager::Secret');
    for (const [id, fn] of ofType('AWS::Lambda::Function')) {
      expect(fn.Properties.Architectures, id).toEqual(['arm64']);
      expect(fn.Properties.Runtime, id).toBe('nodejs24.x');
      const logGroupId = fn.Properties.LoggingConfig?.LogGroup?.Ref as string;
      expect(resources[logGroupId]?.Type, id).toBe('AWS::Logs::LogGroup');
      expect(resources[logGroupId].Properties.RetentionInDays, id).toBeGreaterThan(0);
      expect(fn.Properties.Environment.Variables, id).toMatchObject({
        [envNames.tableName]: { Ref: tableId },
        [envNames.eventBusName]: { Ref: expect.any(String) },
        [envNames.agentUrl]: { Ref: 'AgentUrl' },
        [envNames.agentSecretArn]: { Ref: secretId },
      });
    }
  });

  it('deploys one Lambda per route, module and export from the route table', () => {
    for (const route of routes) {
      const [, fn] = lambdaFor(route.entry, route.handler);
      expect(fn.Properties.Handler).toBe(`index.${route.handler}`);
      for (const workflow of workflowNames) {
        expect(fn.Properties.Environment.Variables[envNames.stateMachineArn(workflow)], route.path).toBeDefined();
      }
    }
  });

  it('deploys one Lambda per step, shared by every state machine', () => {
    const stepFunctions = ofType('AWS::Lambda::Function').filter(([, fn]) => String(fn.Metadata?.[entryMetadataKey]).startsWith('functions/steps/'));
    expect(stepFunctions.map(([, fn]) => fn.Metadata?.[entryMetadataKey]).sort()).toEqual(Object.values(steps).sort());
  });

  it('passes the agent secret to the step Lambdas and lets them read it', () => {
    const [[secretId]] = ofType('AWS::SecretsManager::Secret');
    const [, begin] = lambdaFor(steps.BeginOperation, 'handler');
    const roleId = begin.Properties.Role['Fn::GetAtt'][0] as string;
    const policies = ofType('AWS::IAM::Policy').filter(([, policy]) => policy.Properties.Roles.some((role: { Ref: string }) => role.Ref === roleId));
    const statements = policies.flatMap(([, policy]) => policy.Properties.PolicyDocument.Statement as Array<{ Action: string | string[]; Resource: unknown }>);
    expect(statements).toContainEqual(expect.objectContaining({ Resource: { Ref: secretId }, Action: expect.arrayContaining(['secretsmanager:GetSecretValue']) }));
  });
});

describe('api', () => {
  it('creates an HTTP API route per route-table entry plus $default, each integrated with its Lambda', () => {
    template.resourceCountIs('AWS::ApiGatewayV2::Route', routes.length + 1);
    for (const route of routes) template.hasResourceProperties('AWS::ApiGatewayV2::Route', { RouteKey: `${route.method} ${route.path}` });
    template.hasResourceProperties('AWS::ApiGatewayV2::Route', { RouteKey: '$default' });
    lambdaFor(fallbackRoute.entry, fallbackRoute.handler);
  });

  it('attaches the Lambda authorizer (simple responses, Authorization header) to account and admin routes only', () => {
    const [[authorizerId, resource]] = ofType('AWS::ApiGatewayV2::Authorizer');
    expect(resource.Properties).toMatchObject({
      AuthorizerType: 'REQUEST',
      EnableSimpleResponses: true,
      AuthorizerPayloadFormatVersion: '2.0',
      IdentitySource: ['$request.header.Authorization'],
    });
    const [authorizerFnId] = lambdaFor(authorizer.entry, authorizer.handler);
    expect(JSON.stringify(resource.Properties.AuthorizerUri)).toContain(authorizerFnId);

    const byKey = new Map(ofType('AWS::ApiGatewayV2::Route').map(([, r]) => [r.Properties.RouteKey as string, r.Properties]));
    for (const route of routes) {
      const properties = byKey.get(`${route.method} ${route.path}`)!;
      if (route.access === 'public') {
        expect(properties.AuthorizationType ?? 'NONE', route.path).toBe('NONE');
        expect(properties.AuthorizerId, route.path).toBeUndefined();
      } else {
        expect(properties.AuthorizationType, route.path).toBe('CUSTOM');
        expect(properties.AuthorizerId, route.path).toEqual({ Ref: authorizerId });
      }
    }
  });

  it('logs access on the $default stage', () => {
    template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
      StageName: '$default',
      AutoDeploy: true,
      AccessLogSettings: { DestinationArn: { 'Fn::GetAtt': [Match.anyValue(), 'Arn'] }, Format: Match.anyValue() },
    });
  });
});

describe('workflows', () => {
  it('creates one Standard state machine per workflow, logging everything and traced', () => {
    const machines = ofType('AWS::StepFunctions::StateMachine');
    expect(machines.map(([, m]) => m.Metadata?.[workflowMetadataKey]).sort()).toEqual([...workflowNames].sort());
    for (const [id, machine] of machines) {
      expect(machine.Properties, id).toMatchObject({
        StateMachineType: 'STANDARD',
        TracingConfiguration: { Enabled: true },
        LoggingConfiguration: { Level: 'ALL', IncludeExecutionData: true },
      });
      const logGroupId = machine.Properties.LoggingConfiguration.Destinations[0].CloudWatchLogsLogGroup.LogGroupArn['Fn::GetAtt'][0];
      expect(resources[logGroupId].Type).toBe('AWS::Logs::LogGroup');
    }
  });
});

describe('schedules and events', () => {
  it('creates a rule per schedule with its expression, targeting the schedule Lambda', () => {
    for (const schedule of schedules) {
      const [fnId] = lambdaFor(schedule.entry, schedule.handler);
      template.hasResourceProperties('AWS::Events::Rule', {
        ScheduleExpression: schedule.expression,
        State: 'ENABLED',
        Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [fnId, 'Arn'] } })],
      });
    }
  });

  it('creates a rule on the dbplane bus per event rule, targeting its Lambda', () => {
    const [[busId]] = ofType('AWS::Events::EventBus');
    for (const rule of eventRules) {
      const [fnId] = lambdaFor(rule.entry, rule.handler);
      template.hasResourceProperties('AWS::Events::Rule', {
        EventBusName: { Ref: busId },
        EventPattern: { source: [...rule.pattern.source], 'detail-type': [...rule.pattern['detail-type']] },
        Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [fnId, 'Arn'] } })],
      });
    }
  });
});
