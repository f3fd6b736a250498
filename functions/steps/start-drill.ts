import { startDrill } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'restore into a scratch server' }, async (input) => startDrill(await stepDeps(), input));
