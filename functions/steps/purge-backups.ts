import { purgeBackups } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({}, async (input) => purgeBackups(await stepDeps(), input));
