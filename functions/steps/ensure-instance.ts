import { ensureInstance } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'create server' }, async (input) => ensureInstance(await stepDeps(), input));
