import { checkReplica } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'wait until the replica caught up' }, async (input) => checkReplica(await stepDeps(), input));
