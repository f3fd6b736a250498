import { abandonBlueGreen } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'drop the new server' }, async (input) => abandonBlueGreen(await stepDeps(), input));
