import { startBlueGreen } from '#core/operations.ts';
import { stepHandler } from '#core/steps.ts';
import { stepDeps } from './deps.ts';

export const handler = stepHandler({ step: 'build the new server and start copying', disruptive: true }, async (input) => startBlueGreen(await stepDeps(), input));
