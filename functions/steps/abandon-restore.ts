import { abandonRestore } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'undo restore' }, async (input) => abandonRestore(await stepDeps(), input));
