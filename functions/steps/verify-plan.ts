import { verifyPlan } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'verify plan' }, async (input) => verifyPlan(await stepDeps(), input));
