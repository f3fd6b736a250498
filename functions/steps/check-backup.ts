import { checkBackup } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'copy to three zones' }, async (input) => checkBackup(await stepDeps(), input));
