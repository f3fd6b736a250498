import { switchover } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'switch over to the replica', disruptive: true }, async (input) => switchover(await stepDeps(), input));
