import { checkRestore } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'recover and verify' }, async (input) => checkRestore(await stepDeps(), input));
