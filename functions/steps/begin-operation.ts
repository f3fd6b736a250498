import { beginOperation } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';

export const handler = stepHandler({}, (input, store) => beginOperation(store, input));
