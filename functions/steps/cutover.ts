import { cutover } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'cut over to the new server', disruptive: true }, async (input) => cutover(await stepDeps(), input));
