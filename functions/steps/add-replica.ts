import { addReplica } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'add replica' }, async (input) => addReplica(await stepDeps(), input));
