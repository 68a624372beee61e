/**
 * How `sledge nbd` attaches to a volume: as its writer (a write-exclusive reservation), or as a
 * reader beside the writer (a registered key and a read lease on its clean cache, multi-attach in
 * docs/nbd-gateway.md), and how a reader is promoted to the writer when the writer died.
 */
import type { WriteBackCache } from '#gateway/cache.ts';
import { type Invalidatable, type LeaseBackend, ReadLease, type ReadLeaseOptions } from '#gateway/read-lease.ts';
import type { VolumeClient } from '#gateway/volume-client.ts';

/**
 * Runs when the gateway attaches to a volume, before it serves a single request: registers
 * the gateway's reservation key and takes a write-exclusive reservation, preempting whoever
 * held it (docs/reservations.md). So a second gateway attaching to the same volume fences the
 * first: the first's write-backs are refused by the commit condition, and its FLUSHes fail
 * with EIO instead of silently losing to the newcomer. Every request then presents the key.
 */
export async function onAttach(client: VolumeClient, key: string): Promise<string | null> {
  let state = await client.reserve({ action: 'register', key });
  const holder = state.reservation?.holder;
  try {
    if (holder === undefined) state = await client.reserve({ action: 'reserve', key, type: 'write-exclusive' });
    else if (holder !== key) {
      state = await client.reserve({ action: 'preempt', key, victimKey: holder, type: 'write-exclusive' });
    }
  } catch (err) {
    // Registered but not attached: take the registration back, so nothing is left behind.
    await client.reserve({ action: 'unregister', key }).catch(() => undefined);
    throw err;
  }
  client.reservationKey = key;
  return holder !== undefined && holder !== key ? holder : null;
}

/** On a clean stop, after the final write-back: give the volume back (unregister releases). */
export async function onDetach(client: VolumeClient, log: (message: string) => void): Promise<void> {
  if (!client.reservationKey) return;
  try {
    await client.reserve({ action: 'unregister', key: client.reservationKey });
  } catch (err) {
    log(`could not unregister key ${client.reservationKey}: ${(err as Error).message}`);
  }
}

/**
 * A reader gateway: its lease guards the clean cache until it is promoted; after, it is the only
 * writer, whose cache stays coherent with its own commits as any writer's does.
 */
export class NbdReader {
  readonly lease: ReadLease;
  private promoted = false;
  private promoting = false;
  private readonly log: (message: string) => void;

  constructor(
    api: LeaseBackend,
    cache: Invalidatable,
    private readonly opts: ReadLeaseOptions & { log: (message: string) => void },
  ) {
    this.lease = new ReadLease(api, cache, opts);
    this.log = opts.log;
  }

  /** The clean cache may be used now (the cache's `coherence`). */
  cacheUsable(): boolean {
    return this.promoted || this.lease.cacheUsable();
  }

  /** Registers the key (the reader's identity on the volume; no reservation) and takes the read lease. */
  async attach(client: VolumeClient): Promise<void> {
    await client.reserve({ action: 'register', key: this.opts.key });
    client.reservationKey = this.opts.key;
    try {
      await this.lease.start();
    } catch (err) {
      await client.reserve({ action: 'unregister', key: this.opts.key }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Becomes the writer: gives the lease back (reads then go through the API, uncached, and no
   * commit waits for this gateway's own lease), preempts the reservation's holder (the writer
   * that died is fenced: its commits are refused from now), empties the cache (what the old
   * writer committed is on the API), and lets new connections write.
   */
  async promote(client: VolumeClient, cache: Pick<WriteBackCache, 'invalidate'>, server: { readOnly?: boolean }): Promise<void> {
    if (this.promoting) return;
    this.promoting = true;
    this.log('SIGUSR1: promoting this reader to the writer');
    await this.lease.stop();
    try {
      const preempted = await onAttach(client, this.opts.key);
      cache.invalidate();
      this.promoted = true;
      server.readOnly = false;
      this.log(`promoted to the writer with reservation key ${this.opts.key}${preempted ? `, preempting ${preempted}` : ''}; new connections may write`);
    } catch (err) {
      this.log(`promotion failed, still serving read-only and uncached: ${(err as Error).message}`);
    }
  }

  statsLine(): string {
    const s = this.lease.stats;
    return `read lease: ${s.renewals} renewals, ${s.drops} drops, ${s.closes} closes${this.promoted ? ', promoted to the writer' : ''}`;
  }
}
