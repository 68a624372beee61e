/**
 * A reader gateway's read lease (docs/nbd-gateway.md, "Multi-attach with lease-guarded caches"):
 * it renews the lease, follows the volume's write intent, and says whether the clean cache may
 * be used at this moment. The cache asks `cacheUsable()` before it answers a read from a line and
 * before an API read fills one; `invalidate()` drops every line and every fill in flight.
 *
 * The lease is timed from the moment a renewal was sent, on the monotonic clock, which keeps
 * running while the process is stopped: a reader resumed after SIGSTOP finds its lease lapsed
 * and serves nothing from its cache until a renewal says what is still good. It is timed on the
 * wall clock too, and must hold on both: a machine suspended whole may stop the monotonic clock.
 */
import { performance } from 'node:perf_hooks';
import type { ReadLeaseAnswer } from './volume-client.ts';

/** What the lease needs from the API. `VolumeClient` is one. */
export interface LeaseBackend {
  renewReadLease(body: { key: string; leaseMs: number; ackEpoch: number | null; closeAtSeq?: number }): Promise<ReadLeaseAnswer>;
  releaseReadLease(key: string): Promise<void>;
}

/** What the lease needs from the cache. */
export interface Invalidatable {
  invalidate(): void;
}

export interface ReadLeaseOptions {
  key: string;
  /** The lease term T. */
  leaseMs: number;
  /** A reader that sees the intent open with no commit for this long asks to close it. Default 2 s. */
  quietMs?: number;
  log?: (message: string) => void;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class ReadLease {
  /** The closed epoch and the head under which the cache holds lines; null: it holds nothing and fills nothing. */
  private caching: { epoch: number; seq: number } | null = null;
  /** Monotonic time until which the lease is valid here: the last good renewal's send time plus T minus the margin. */
  private validUntilMs = Number.NEGATIVE_INFINITY;
  /** The same bound on the wall clock: a machine suspended whole may stop the monotonic clock, not the wall clock. */
  private validUntilWallMs = Number.NEGATIVE_INFINITY;
  /** The open intent and head last seen, and since when (for closing a quiet intent). */
  private openSeen: { epoch: number; seq: number; sinceMs: number } | null = null;
  private stopped = false;
  private loop: Promise<void> | null = null;
  private failing = false;
  private readonly marginMs: number;
  private readonly intervalMs: number;
  private readonly quietMs: number;
  private readonly log: (message: string) => void;
  /** Counters for the exit line and tests. */
  readonly stats = { renewals: 0, drops: 0, closes: 0 };

  constructor(
    private readonly api: LeaseBackend,
    private readonly cache: Invalidatable,
    readonly opts: ReadLeaseOptions,
  ) {
    this.marginMs = Math.ceil(opts.leaseMs / 12);
    this.intervalMs = Math.floor(opts.leaseMs / 6);
    this.quietMs = opts.quietMs ?? 2000;
    this.log = opts.log ?? (() => undefined);
  }

  /** The cache may answer from its lines, and fill them, now. */
  cacheUsable(): boolean {
    return this.caching !== null && performance.now() < this.validUntilMs && Date.now() < this.validUntilWallMs;
  }

  /** Takes the lease (the first renewal must succeed), then keeps renewing it until `stop`. */
  async start(): Promise<void> {
    while (await this.renew());
    this.loop = this.keepRenewing();
  }

  private async keepRenewing(): Promise<void> {
    while (!this.stopped) {
      await sleep(this.intervalMs);
      if (this.stopped) return;
      try {
        // Again at once while the head holds an older acknowledgement than the intent's epoch.
        while ((await this.renew()) && !this.stopped);
        if (this.failing) this.log('read lease renewed again');
        this.failing = false;
      } catch (err) {
        if (!this.failing) this.log(`read lease renewal failed (reads go through the API, uncached, until one succeeds): ${(err as Error).message}`);
        this.failing = true;
      }
    }
  }

  /** One renewal; true when the acknowledgement it stored is behind the intent (renew again at once). */
  private async renew(): Promise<boolean> {
    const sentMs = performance.now();
    const sentWallMs = Date.now();
    const quiet = this.openSeen !== null && sentMs - this.openSeen.sinceMs >= this.quietMs;
    const answer = await this.api.renewReadLease({
      key: this.opts.key,
      leaseMs: this.opts.leaseMs,
      // The epoch it caches under, or null: it holds nothing, so it honours any opening.
      ackEpoch: this.caching ? this.caching.epoch : null,
      ...(quiet ? { closeAtSeq: this.openSeen!.seq } : {}),
    });
    this.stats.renewals++;
    const { intent, headSeq } = answer;
    if (this.caching && (intent.open || intent.epoch !== this.caching.epoch || headSeq !== this.caching.seq)) {
      // The writer opened the intent, or committed while this reader's lease had run out: every
      // line may be older than a commit. Drop them all before acknowledging anything.
      this.cache.invalidate();
      this.stats.drops++;
      this.log(`read lease: cache dropped (intent epoch ${intent.epoch} ${intent.open ? 'open' : 'closed'}, head ${headSeq}; was caching under epoch ${this.caching.epoch} at head ${this.caching.seq})`);
      this.caching = null;
    }
    if (!this.caching && !intent.open) {
      // Closed: no commit applies until it opens again, which needs this reader's acknowledgement.
      this.cache.invalidate();
      this.caching = { epoch: intent.epoch, seq: headSeq };
      if (quiet) this.stats.closes++;
      this.log(`read lease: caching (intent epoch ${intent.epoch} closed, head ${headSeq})`);
    }
    if (intent.open) {
      const same = this.openSeen && this.openSeen.epoch === intent.epoch && this.openSeen.seq === headSeq;
      if (!same) this.openSeen = { epoch: intent.epoch, seq: headSeq, sinceMs: sentMs };
    } else this.openSeen = null;
    // Valid from the send time, not the answer's: the head timed the lease from no earlier.
    this.validUntilMs = Math.max(this.validUntilMs, sentMs + answer.leaseMs - this.marginMs);
    this.validUntilWallMs = Math.max(this.validUntilWallMs, sentWallMs + answer.leaseMs - this.marginMs);
    return answer.ackedEpoch < intent.epoch;
  }

  /** Stops renewing and gives the lease back (best effort: it runs out by itself anyway). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.validUntilMs = Number.NEGATIVE_INFINITY;
    this.validUntilWallMs = Number.NEGATIVE_INFINITY;
    await this.loop?.catch(() => undefined);
    await this.api.releaseReadLease(this.opts.key).catch((err: Error) => this.log(`could not release the read lease: ${err.message}`));
  }
}
