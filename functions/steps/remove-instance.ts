import { removeInstance } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'remove server' }, async (input) => removeInstance((await stepDeps()).agent, input));
