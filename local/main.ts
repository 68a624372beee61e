/**
 * `npm start`: the control plane on this machine, against the local AWS endpoint.
 */
import { startControlPlane } from './control-plane.ts';

const port = Number(process.env.PORT ?? 3000);
const sledCount = process.env.SLEDGE_SLEDS ? Number(process.env.SLEDGE_SLEDS) : undefined;

// The lease watchdog runs every 5 s here, as the stack's schedule does on AWS.
const plane = await startControlPlane({ port, sledCount, leaseSweepIntervalMs: 5000 });
const url = plane.apiUrl;
console.log(`
Sledge is serving the volume API on ${url}
  local AWS endpoint: ${plane.endpointUrl}
  API description:    ${url}/openapi.json

Try:
  curl -s -X POST ${url}/volumes -H 'content-type: application/json' -d '{"sizeBytes": 1073741824}'
  head -c 8192 /dev/urandom > /tmp/blk && curl -s -X PUT "${url}/volumes/<volumeId>/data?offset=0" \\
       -H 'content-type: application/octet-stream' --data-binary @/tmp/blk
  curl -s "${url}/volumes/<volumeId>/data?offset=0&length=8192" | cmp - /tmp/blk && echo identical

Ctrl-C stops it.`);

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    console.log(`\n${signal}: stopping`);
    plane.stop().then(
      () => process.exit(0),
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
  });
}
