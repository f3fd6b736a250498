import { precheckPlan } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'precheck plan' }, async (input) => precheckPlan(await stepDeps(), input));
