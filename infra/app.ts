import { App } from 'aws-cdk-lib';
import { addNagChecks } from './nag.ts';
import { DbplaneStack, stackId } from './stack.ts';

/** `cdk synth` entry point (cdk.json: `tsx infra/app.ts`). */
const app = new App();
new DbplaneStack(app, stackId);
addNagChecks(app);
app.synth();
