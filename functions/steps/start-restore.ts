import { startRestore } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'start restore' }, async (input) => startRestore(await stepDeps(), input));
