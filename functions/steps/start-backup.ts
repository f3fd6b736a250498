import { startBackup } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'start backup' }, async (input) => startBackup(await stepDeps(), input));
