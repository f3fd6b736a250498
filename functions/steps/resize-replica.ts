import { applyToReplica } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'resize the replica', disruptive: true }, async (input) => applyToReplica(await stepDeps(), input));
