import { verifyUpgrade } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'verify the upgrade' }, async (input) => verifyUpgrade(await stepDeps(), input));
