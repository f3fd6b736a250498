import { rollBackBlueGreen } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'go back to the old server' }, async (input) => rollBackBlueGreen(await stepDeps(), input));
