/**
 * A control plane in a process of its own, for the NBD tests that kill it and start it again
 * (test/integration/nbd-outage.test.ts), on the shared local endpoint (AWS_ENDPOINT_URL).
 *
 *   node --import tsx test/integration/nbd-plane.ts deploy <stackName>
 *       Deploys its own stack and serves the whole control plane (API, workers) on a free port.
 *   node --import tsx test/integration/nbd-plane.ts restart <port> <envJson> <notBeforeMs>
 *       The restart after a crash: the head's API again, on the same port, with the environment
 *       the first one printed, as a head process restarting on AWS would (the stack is not
 *       deployed again: that takes half a minute on a busy 2-core machine, and is no part of a
 *       head's restart). Every byte of state is on the endpoint, so it serves the same volumes.
 *       It listens no earlier than `notBeforeMs` (ms since the epoch), so the test can make the
 *       outage as long as it wants whatever the machine's speed.
 *
 * Prints `sledge-nbd-plane <json>` (`{ apiUrl, env }`) once it serves. SIGKILL is the crash the
 * tests want; SIGTERM stops it.
 */

const READY_PREFIX = 'sledge-nbd-plane ';
const [mode, ...args] = process.argv.slice(2);
if (!process.env.AWS_ENDPOINT_URL) throw new Error('nbd-plane.ts needs AWS_ENDPOINT_URL: the local endpoint the tests share');

let stop: () => Promise<void>;
if (mode === 'deploy' && args.length === 1) {
  const { startControlPlane } = await import('#local/control-plane.ts');
  const plane = await startControlPlane({ port: 0, preferExistingEndpoint: true, stackName: args[0]!, visibilityTimeoutSeconds: 2 });
  process.stdout.write(`${READY_PREFIX}${JSON.stringify({ apiUrl: plane.apiUrl, env: plane.env })}\n`);
  stop = () => plane.stop();
} else if (mode === 'restart' && args.length === 3) {
  const [port, envJson, notBefore] = args as [string, string, string];
  Object.assign(process.env, JSON.parse(envJson) as Record<string, string>);
  // Imported only now: the handlers read their configuration from the environment just set.
  const { handler } = await import('#lambdas/api.ts');
  const { startLocalApi } = await import('#local/http-adapter.ts');
  const { LOCAL_CREDENTIALS_ENV, localPrincipals } = await import('#local/principals.ts');
  // The API checks signatures as the first one did: the same local principals, from the same file.
  const credentials = process.env[LOCAL_CREDENTIALS_ENV];
  const iam = credentials && process.env.SLEDGE_API_AUTH !== 'none' ? { iam: { principals: Object.values(localPrincipals(credentials).byProfile) } } : {};
  const wait = Number(notBefore) - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  const api = await startLocalApi({ handler, port: Number(port), ...iam });
  process.stdout.write(`${READY_PREFIX}${JSON.stringify({ apiUrl: api.url, env: JSON.parse(envJson) })}\n`);
  stop = () => api.close();
} else {
  throw new Error('usage: nbd-plane.ts deploy <stackName> | restart <port> <envJson> <notBeforeMs>');
}

process.once('SIGTERM', () => {
  stop().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error('stopping the control plane:', err);
      process.exit(1);
    },
  );
});
