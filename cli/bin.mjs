#!/usr/bin/env node
// Runs the TypeScript sources directly, so `npx dbplane` works in a checkout without a build step.
import { register } from 'tsx/esm/api';

register();
await import('./main.ts');
