import { revertChange } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'revert to previous plan' }, async (input) => revertChange(await stepDeps(), input));
