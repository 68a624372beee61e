/**
 * `POST /volumes/{id}/read-lease` (docs/nbd-gateway.md, "The reader's side"): a reader's renewal
 * or release, applied to the volume item as read and stored on condition that the leases and the
 * intent did not move; re-read and apply again when they did.
 */
import { sleep } from '../core/async.ts';
import { UnavailableError } from '../core/errors.ts';
import { requireActive } from '../data/volume-rules.ts';
import { pageMap } from '../ports.ts';
import { applyLeaseCommand, parseReadLeaseBody, type ReadLeaseView } from './read-leases.ts';

const LEASE_ATTEMPT_MAX = 8;

export async function applyReadLeaseBody(
  volumeId: string,
  body: Record<string, unknown>,
): Promise<ReadLeaseView | { volumeId: string; key: string; released: true }> {
  const cmd = parseReadLeaseBody(body);
  for (let attempt = 0; attempt < LEASE_ATTEMPT_MAX; attempt++) {
    if (attempt > 0) await sleep(Math.random() * 10 * 2 ** attempt);
    const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
    if (cmd.action === 'release' && v.readLeases?.[cmd.key] === undefined) return { volumeId, key: cmd.key, released: true };
    // The head's clock, read after the volume item: the lease runs from no earlier than the request was sent.
    const update = applyLeaseCommand(v, cmd, Date.now());
    if (!(await pageMap().storeReadLeases(v, update))) continue;
    if (cmd.action === 'release') return { volumeId, key: cmd.key, released: true };
    return { volumeId, key: cmd.key, leaseMs: cmd.leaseMs, ackedEpoch: update.leases[cmd.key]!.ackedEpoch, intent: update.intent, headSeq: v.headSeq };
  }
  throw new UnavailableError(`read leases of volume ${volumeId} kept changing under ${LEASE_ATTEMPT_MAX} attempts; retry`, { retryAfterSeconds: 1 });
}
