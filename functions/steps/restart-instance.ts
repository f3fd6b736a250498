import { applyToInstance } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'restart the server', disruptive: true }, async (input) => applyToInstance(await stepDeps(), input));
