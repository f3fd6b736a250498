import { keyWrapperFromEnv } from '#core/keys.ts';
import { createDataKey } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';

export const handler = stepHandler({ step: 'create data key' }, (input, store) => createDataKey({ store, keys: keyWrapperFromEnv() }, input));
