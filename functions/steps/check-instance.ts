import { checkInstance } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'wait until healthy' }, async (input) => checkInstance((await stepDeps()).agent, input));
