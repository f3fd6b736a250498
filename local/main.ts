import { resolve } from 'node:path';
import { startRuntime } from './runtime.ts';

/** `npm start`: the whole service on this machine. Configuration: DBPLANE_DATA_DIR, DBPLANE_PORT. */

const dataDir = resolve(process.env.DBPLANE_DATA_DIR ?? '.dbplane');
const port = Number(process.env.DBPLANE_PORT ?? 8080);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`DBPLANE_PORT must be a port number (0 picks a free one), got "${process.env.DBPLANE_PORT}"`);
  process.exit(2);
}

const runtime = await startRuntime({ dataDir, port, log: (message) => console.log(`[dbplane] ${message}`) });
console.log(`dbplane is running
  API:          ${runtime.apiUrl}
  admin token:  ${runtime.adminToken}   (also in ${resolve(dataDir, 'admin.token')})
  data folder:  ${dataDir}
Try: DBPLANE_API_URL=${runtime.apiUrl} DBPLANE_TOKEN=$(cat ${resolve(dataDir, 'admin.token')}) npx dbplane databases list`);

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    console.log(`[dbplane] ${signal}: stopping the servers, the agent and DynamoDB Local`);
    void runtime.stop().then(() => process.exit(0));
  });
}
