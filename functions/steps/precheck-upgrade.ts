import { precheckUpgrade } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'check the database for the upgrade' }, async (input) => precheckUpgrade(await stepDeps(), input));
