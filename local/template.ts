/**
 * The synthesized CDK template as the local runtime's source of truth: the state machines CDK deploys, made
 * runnable here by resolving their intrinsics and mapping every Task to the handler module CDK bundles.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import type { StateMachineDefinition } from 'aws-local-stepfunctions';
import { workflowNames, type WorkflowName } from '../functions/core/config.ts';
import { entryMetadataKey, handlerMetadataKey } from '../infra/function.ts';
import { projectRoot } from '../infra/project.ts';
import { DbplaneStack, stackId } from '../infra/stack.ts';
import { workflowMetadataKey } from '../infra/workflows/workflows.ts';

/** The account and region local ARNs are made in. */
export const localRegion = 'us-east-1';
export const localAccount = '000000000000';

/** `arn:aws:lambda:us-east-1:000000000000:function:<LogicalId>`: how a template's Lambda is named locally. */
export function localLambdaArn(logicalId: string): string {
  return `arn:aws:lambda:${localRegion}:${localAccount}:function:${logicalId}`;
}

export interface CfnResource {
  Type: string;
  Properties?: Record<string, unknown>;
  Metadata?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface CfnTemplate {
  Resources: Record<string, CfnResource>;
  [key: string]: unknown;
}

export interface SynthesizeOptions {
  /**
   * Bundle the Lambda code with esbuild (slow), as `npm run synth` does.
   * @default false - bundling is skipped through the `aws:cdk:bundling-stacks` context
   */
  bundle?: boolean;
  /**
   * Extra context, on top of cdk.json's.
   * @default - none
   */
  context?: Record<string, unknown>;
}

export interface SynthesizedTemplate {
  template: CfnTemplate;
  /** The cloud assembly folder holding the bundled assets (only with `bundle: true`; the caller may delete it). */
  assetsDir?: string;
}

/** Synthesizes the dbplane stack in this process (no CDK CLI, no network), with cdk.json's context. */
export function synthesizeTemplate(options: SynthesizeOptions = {}): SynthesizedTemplate {
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'dbplane-cdk-'));
  try {
    const app = new App({
      outdir,
      context: {
        ...cdkJsonContext(),
        ...options.context,
        'aws:cdk:bundling-stacks': options.bundle ? ['**'] : [],
      },
    });
    const stack = new DbplaneStack(app, stackId);
    const assembly = app.synth();
    const template = assembly.getStackArtifact(stack.artifactId).template as CfnTemplate;
    if (options.bundle) return { template, assetsDir: outdir };
    fs.rmSync(outdir, { recursive: true, force: true });
    return { template };
  } catch (error) {
    fs.rmSync(outdir, { recursive: true, force: true });
    throw error;
  }
}

/** The context cdk.json gives the CDK CLI, for in-process synthesis. */
export function cdkJsonContext(): Record<string, unknown> {
  const cdkJson = JSON.parse(fs.readFileSync(path.join(projectRoot, 'cdk.json'), 'utf8')) as { context?: Record<string, unknown> };
  return cdkJson.context ?? {};
}

/** A Task's handler: the module (relative to the project root) and its export, as CDK bundles them. */
export interface LocalTask {
  entry: string;
  handler: string;
}

export interface LocalStateMachine {
  /** The workflow (functions/core/config.ts). */
  name: WorkflowName;
  /** The state machine's logical id in the template. */
  logicalId: string;
  /** Runnable ASL: intrinsics resolved, Lambda ARNs made local. */
  definition: StateMachineDefinition;
  /** Every Task's resource (a local Lambda ARN) → the handler it runs. */
  tasks: Record<string, LocalTask>;
}

/**
 * The template's state machines, one per workflow, made runnable locally. Throws when a workflow has no
 * state machine, or a Task invokes anything but a Lambda carrying `dbplane:entry`/`dbplane:handler` metadata.
 */
export function loadStateMachines(template: CfnTemplate): LocalStateMachine[] {
  const machines: LocalStateMachine[] = [];
  for (const [logicalId, resource] of Object.entries(template.Resources)) {
    if (resource.Type !== 'AWS::StepFunctions::StateMachine') continue;
    const name = resource.Metadata?.[workflowMetadataKey];
    if (!workflowNames.includes(name as WorkflowName)) {
      throw new Error(`state machine ${logicalId} has no known ${workflowMetadataKey} metadata (got ${JSON.stringify(name)})`);
    }
    if (machines.some((machine) => machine.name === name)) throw new Error(`workflow ${String(name)} has two state machines`);

    const resolved = resolveIntrinsics(resource.Properties?.DefinitionString, template);
    if (typeof resolved !== 'string') throw new Error(`state machine ${logicalId} has no DefinitionString`);
    let text = resolved;
    const substitutions = resource.Properties?.DefinitionSubstitutions as Record<string, unknown> | undefined;
    for (const [key, value] of Object.entries(substitutions ?? {})) {
      text = text.replaceAll(`\${${key}}`, String(resolveIntrinsics(value, template)));
    }
    const definition = JSON.parse(text) as StateMachineDefinition;

    const tasks: Record<string, LocalTask> = {};
    for (const [stateName, resourceArn] of taskStates(definition)) {
      tasks[resourceArn] = taskOf(template, name as WorkflowName, stateName, resourceArn);
    }
    machines.push({ name: name as WorkflowName, logicalId, definition, tasks });
  }
  const missing = workflowNames.filter((name) => !machines.some((machine) => machine.name === name));
  if (missing.length > 0) throw new Error(`the template has no state machine for ${missing.join(', ')}`);
  return machines;
}

/** Every Task state of a definition, nested Parallel branches and Map processors included: [state name, Resource]. */
export function taskStates(definition: Pick<StateMachineDefinition, 'States'>): Array<[string, string]> {
  const found: Array<[string, string]> = [];
  for (const [stateName, state] of Object.entries(definition.States)) {
    if (state.Type === 'Task') found.push([stateName, state.Resource]);
    if (state.Type === 'Parallel') for (const branch of state.Branches) found.push(...taskStates(branch));
    if (state.Type === 'Map') {
      const processor = state.ItemProcessor ?? state.Iterator;
      if (processor) found.push(...taskStates(processor));
    }
  }
  return found;
}

const localLambdaArnPattern = new RegExp(`^arn:aws:lambda:${localRegion}:${localAccount}:function:([A-Za-z0-9]+)$`);

function taskOf(template: CfnTemplate, workflow: WorkflowName, stateName: string, resourceArn: string): LocalTask {
  const logicalId = localLambdaArnPattern.exec(resourceArn)?.[1];
  if (!logicalId) {
    throw new Error(`${workflow} task state ${stateName} uses ${resourceArn}, which the local runtime cannot run (use LambdaInvoke with payloadResponseOnly)`);
  }
  const metadata = template.Resources[logicalId]?.Metadata ?? {};
  const entry = metadata[entryMetadataKey];
  const handler = metadata[handlerMetadataKey];
  if (typeof entry !== 'string' || typeof handler !== 'string') {
    throw new Error(`${workflow} task state ${stateName} invokes Lambda ${logicalId}, which has no ${entryMetadataKey}/${handlerMetadataKey} metadata`);
  }
  return { entry, handler };
}

const pseudoParameters: Record<string, string> = {
  'AWS::Partition': 'aws',
  'AWS::Region': localRegion,
  'AWS::AccountId': localAccount,
  'AWS::URLSuffix': 'amazonaws.com',
};

/** Resolves Fn::Join, Fn::GetAtt [Lambda, Arn] and Ref of pseudo parameters; anything else is an error. */
export function resolveIntrinsics(value: unknown, template: CfnTemplate): unknown {
  if (Array.isArray(value)) return value.map((item) => resolveIntrinsics(item, template));
  if (value === null || typeof value !== 'object') return value;
  const entries = Object.entries(value);
  if (entries.length === 1) {
    const [key, argument] = entries[0];
    if (key === 'Fn::Join') {
      const [separator, parts] = argument as [string, unknown[]];
      return (resolveIntrinsics(parts, template) as unknown[]).map(String).join(separator);
    }
    if (key === 'Fn::GetAtt') {
      const [logicalId, attribute] = typeof argument === 'string' ? argument.split('.') : (argument as [string, string]);
      const type = template.Resources[logicalId]?.Type;
      if (type === 'AWS::Lambda::Function' && attribute === 'Arn') return localLambdaArn(logicalId);
      throw new Error(`cannot resolve Fn::GetAtt ${logicalId}.${attribute} (${type ?? 'no such resource'}) locally`);
    }
    if (key === 'Ref') {
      const resolved = pseudoParameters[argument as string];
      if (resolved === undefined) throw new Error(`cannot resolve Ref ${String(argument)} locally`);
      return resolved;
    }
    if (key.startsWith('Fn::')) throw new Error(`cannot resolve ${key} locally`);
  }
  return Object.fromEntries(entries.map(([key, item]) => [key, resolveIntrinsics(item, template)]));
}
