import { resizeInstance } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'resize server' }, async (input) => resizeInstance(await stepDeps(), input));
