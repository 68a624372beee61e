/**
 * A control plane in a process of its own, for the `integration-b` project
 * (test/integration/global-setup-b.ts): the same as the integration project's, on its own local
 * AWS endpoint and stack, so that the two projects run side by side without sharing a queue, a
 * table or the endpoint process. A process of its own because a control plane's configuration
 * and AWS clients are per process.
 *
 * On start it prints one line, `sledge-plane <json>`, with the URLs and environment the tests
 * need; SIGTERM stops it.
 */
import { startControlPlane } from '#local/control-plane.ts';

/** The start of the line global-setup-b.ts waits for. */
const READY_PREFIX = 'sledge-plane ';

const plane = await startControlPlane({
  port: 0,
  endpointPort: 0,
  // Its own endpoint process, whatever AWS_ENDPOINT_URL says (CI's serves the other project).
  preferExistingEndpoint: false,
  stackName: `sledge-test-b-${Date.now().toString(36)}`,
  // As test/integration/global-setup.ts: a failed work message comes back after 2 s.
  visibilityTimeoutSeconds: 2,
});
process.stdout.write(`${READY_PREFIX}${JSON.stringify({ apiUrl: plane.apiUrl, endpointUrl: plane.endpointUrl, env: plane.env })}\n`);

process.once('SIGTERM', () => {
  plane.stop().finally(() => process.exit(0));
});
