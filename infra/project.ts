import * as path from 'node:path';

/** The repository root: every `entry` in the route, schedule, rule and step tables is relative to it. */
export const projectRoot = path.resolve(import.meta.dirname, '..');
