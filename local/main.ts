/**
 * `npm start`: the control plane on this machine, against the local AWS endpoint.
 */
import { resolve } from 'node:path';
import { startControlPlane, type ControlPlane } from './control-plane.ts';
import { LOCAL_CREDENTIALS_ENV, PROFILES } from './principals.ts';
import { EndpointUnavailableError, portIsFree } from './endpoint.ts';
import { UnsafeEndpointError } from './endpoint-check.ts';

const port = Number(process.env.PORT ?? 3000);
const sledCount = process.env.SLEDGE_SLEDS ? Number(process.env.SLEDGE_SLEDS) : undefined;
/** The local principals' keys, in AWS shared-credentials format (docs/security.md). */
const credentialsFile = resolve(process.env[LOCAL_CREDENTIALS_ENV] ?? '.sledge/credentials');

/** Prints one message for a problem the user can fix, without a stack, and exits non-zero. */
function refuse(message: string): never {
  console.error(`sledge: ${message}`);
  process.exit(1);
}

function portInUse(): never {
  refuse(`port ${port} is already in use on 127.0.0.1; stop what listens there, or choose another port, e.g. \`PORT=${port < 65_535 ? port + 1 : 3000} npm start\`.`);
}

if (!Number.isInteger(port) || port < 0 || port > 65_535) refuse(`PORT=${process.env.PORT} is not a TCP port (0 to 65535).`);
// Checked before the endpoint starts and the stack deploys, so a busy port fails at once. The
// listen below can still lose a race for it, and says the same then.
if (port !== 0 && !(await portIsFree(port))) portInUse();

let plane: ControlPlane;
try {
  // The stack's schedules run at the stack's rates: the lease sweep every minute, so a head
  // whose lease lapsed is replaced within about a minute, as on AWS.
  plane = await startControlPlane({ port, sledCount, schedules: true, credentialsFile, auditLog: 'stdout' });
} catch (err) {
  if (err instanceof UnsafeEndpointError || err instanceof EndpointUnavailableError) refuse(err.message);
  if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') portInUse();
  throw err;
}
const url = plane.apiUrl;
const tenant = plane.principals.byProfile[PROFILES.tenantA];
const region = process.env.AWS_REGION ?? 'us-east-1';
const sig = `--aws-sigv4 "aws:amz:${region}:execute-api" --user "$KEY:$SECRET"`;
console.log(`
Sledge is serving the volume API on ${url}
  local AWS endpoint: ${plane.endpointUrl}
  backup vault:       ${plane.vaultUrl ?? 'none'} (docs/backup.md; SLEDGE_VAULT_ENDPOINT_URL names another)
  API description:    ${url}/openapi.json
  credentials:        ${credentialsFile}
                      profiles ${PROFILES.operator} (every route), ${PROFILES.tenantA} and ${PROFILES.tenantB} (their own volumes)

Every request must be signed (AWS SigV4, service execute-api), as with the deployed stack.
Try, as ${PROFILES.tenantA}:
  KEY=${tenant.accessKeyId} SECRET='${tenant.secretAccessKey}'
  curl -s ${sig} -X POST ${url}/volumes -H 'content-type: application/json' -d '{"sizeBytes": 1073741824}'
  head -c 8192 /dev/urandom > /tmp/blk && curl -s ${sig} -X PUT "${url}/volumes/<volumeId>/data?offset=0" \\
       -H 'content-type: application/octet-stream' --data-binary @/tmp/blk
  curl -s ${sig} "${url}/volumes/<volumeId>/data?length=8192&offset=0" | cmp - /tmp/blk && echo identical
The sledge CLI and the NBD gateway take the same keys through the AWS credential chain:
  export AWS_SHARED_CREDENTIALS_FILE=${credentialsFile}
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 node bin/sledge.js nbd <volumeId> --api ${url} --profile ${PROFILES.tenantA}
      (the tunable puts the gateway's buffers in huge pages: docs/nbd-gateway.md, "Huge pages")
  node bin/sledge.js drives --api ${url} --profile ${PROFILES.operator}

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
