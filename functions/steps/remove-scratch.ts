import { removeScratch } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'remove the scratch server' }, async (input) => removeScratch(await stepDeps(), input));
