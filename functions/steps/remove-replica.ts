import { removeReplica } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'remove replica', disruptive: true }, async (input) => removeReplica(await stepDeps(), input));
