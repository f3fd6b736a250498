import { verifyDrill } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'read every table' }, async (input) => verifyDrill(await stepDeps(), input));
