/**
 * A Sledge control plane in its own process, for the backup tests (docs/backup.md): a second
 * site restoring from another plane's vault, or a plane whose worker a test kills with SIGKILL
 * and starts again. It uses the endpoint `AWS_ENDPOINT_URL` names and the vault
 * `SLEDGE_VAULT_ENDPOINT_URL` names (both started by the test, so they outlive this process),
 * deploys the stack `SITE_STACK_NAME` there (a restart finds it deployed), and prints one line
 * `SITE {"apiUrl": ...}` once it serves. SIGTERM stops it; SIGKILL is the crash under test.
 */
import { startControlPlane } from '#local/control-plane.ts';

const plane = await startControlPlane({
  port: 0,
  preferExistingEndpoint: true,
  stackName: process.env.SITE_STACK_NAME ?? 'sledge-site',
  // A message in flight when this process is killed comes back after 2 s, not 12 minutes.
  visibilityTimeoutSeconds: 2,
  vault: { endpointUrl: process.env.SLEDGE_VAULT_ENDPOINT_URL! },
});
console.log(`SITE ${JSON.stringify({ apiUrl: plane.apiUrl })}`);
process.on('SIGTERM', () => {
  plane.stop().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
