import { revertChange } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'put the previous version back' }, async (input) => revertChange(await stepDeps(), input));
