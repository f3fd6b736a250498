import { checkBlueGreen } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'wait until the new server caught up' }, async (input) => checkBlueGreen(await stepDeps(), input));
