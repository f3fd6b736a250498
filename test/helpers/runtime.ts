import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Runtime, startRuntime } from '../../local/runtime.ts';

/** Starts the whole local runtime in-process on free ports and a temp folder; `stop` removes both. */
export async function startTestRuntime(options: { agentFaults?: boolean; stepFaults?: boolean } = {}): Promise<Runtime & { dataDir: string }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'dbplane-test-'));
  try {
    const runtime = await startRuntime({ dataDir, port: 0, agentFaults: options.agentFaults, stepFaults: options.stepFaults, fastWaits: true });
    const stopRuntime = runtime.stop;
    // Assigned onto the runtime (not spread): `agentUrl` is a getter that follows agent restarts.
    return Object.assign(runtime, {
      dataDir,
      async stop() {
        await stopRuntime();
        rmSync(dataDir, { recursive: true, force: true });
      },
    });
  } catch (error) {
    rmSync(dataDir, { recursive: true, force: true });
    throw error;
  }
}
