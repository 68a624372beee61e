/**
 * The writer's side of multi-attach (docs/nbd-gateway.md, "The writer's side"): a commit refused
 * because readers may still cache what it changes opens the write intent and waits until every
 * live read lease has acknowledged the opening or run out, then commits again.
 */
import { sleep } from '../core/async.ts';
import type { VolumeRecord } from '../core/records.ts';
import { pendingLeases } from '../control/read-leases.ts';
import { pageMap } from '../ports.ts';

/** The longest a commit waits for readers: past the longest lease term (15 s) and its margin. */
export const INTENT_WAIT_MAX_MS = 30_000;

/**
 * Opens the intent if it is closed and waits (polling the volume item) until no live lease is
 * behind its epoch, or until `deadlineMs`. Returns the volume item last read (null: the volume
 * is gone); the caller commits on its intent and leases, and a commit that still finds a reader
 * behind is refused again.
 */
export async function openIntentAndWait(volumeId: string, deadlineMs: number): Promise<VolumeRecord | null> {
  for (let poll = 0; ; poll++) {
    const v = await pageMap().getVolume(volumeId);
    if (!v?.writeIntent) return v;
    if (!v.writeIntent.open) {
      // Closed: open it (epoch + 1). Losing the race to another head's opening is as good.
      await pageMap().openWriteIntent(volumeId, v.writeIntent);
      continue;
    }
    const nowMs = Date.now();
    const pending = pendingLeases(v, nowMs);
    if (pending.length === 0 || nowMs >= deadlineMs) return v;
    // A live reader acknowledges at its next renewal; a stalled one's lease runs out at its expiry.
    const firstExpiryMs = Math.min(...pending.map((k) => v.readLeases![k]!.expiresAtMs)) + 1 - nowMs;
    await sleep(Math.max(1, Math.min(firstExpiryMs, deadlineMs - nowMs, poll < 10 ? 50 : 100)));
  }
}
