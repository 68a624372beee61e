/**
 * The gateway's only link to Sledge: the volume API over HTTP (local, or API Gateway on AWS).
 * The gateway never touches S3 or DynamoDB itself; the only AWS code here is the SDK's request
 * signer: every attempt is signed (SigV4 for execute-api) with the credentials the `sledge`
 * command resolved (`--profile`, environment, shared credentials file).
 *
 * Retries are bounded in time, not in count: retryable answers (429, 5xx, network errors,
 * timeouts) are tried again with capped, jittered backoff that honours `Retry-After`, until the
 * retry budget (`retryBudgetMs`, 120 s by default) is spent. Like iSCSI's replacement timeout
 * (also 120 s by default), the budget lets the volume ride out a control-plane restart or a
 * network outage: the client's I/O waits instead of failing, and a FLUSH that fails turns a
 * mounted file system read-only. Resending a batch after an unknown outcome is safe: writing the
 * same bytes to the same blocks twice is idempotent, and batches that overlap are never in
 * flight together (docs/nbd-gateway.md).
 */
import { type BatchPartsPiece, encodeBatchParts } from '#shared/api/batch.ts';
import { type Deferred, deferred, sleep } from '#shared/core/async.ts';
import { requestSigner, type RequestSigner } from '#shared/api/signing.ts';
import type { ReadPlan } from '#shared/data/read-plan.ts';
import type { IncomingHttpHeaders } from 'node:http';
import { checkPlan, readPlanned } from './direct-read.ts';
import { type PretouchedMemory, sharedPretouchedMemory } from './pretouched.ts';
import { checkWritePlan, encodeDirectBatch, putChunks, type PlanExtent, type WritePlan } from './direct-write.ts';
import { type HttpAnswer, httpExchange } from '#shared/net/http.ts';

/**
 * The API's limits (shared/data/volume-rules.ts MAX_IO_BYTES, shared/core/records.ts MAX_PAGES_PER_COMMIT).
 * Repeated here so the gateway does not load the head's AWS modules; a unit test asserts they
 * are equal.
 */
export const API_MAX_IO_BYTES = 4 * 1024 * 1024;
export const API_MAX_PAGES_PER_BATCH = 96;

/**
 * Pages per batch on a folding volume (docs/page-map.md, "Folding"): its commits write no page
 * items, so only the extents a segment record holds limit a batch (4 MiB of 4 KiB blocks is
 * 1,024 data extents at most); 1,024 MiB of address space keeps zero runs well within that.
 */
export const API_FOLDING_PAGES_PER_BATCH = 1024;
/** The longest range one read plan describes (shared/data/read-plan.ts MAX_PLAN_BYTES). */
export const API_MAX_PLAN_BYTES = 16 * 1024 * 1024;
/** The longest range one allocation query describes (shared/data/read.ts MAX_ALLOCATION_BYTES). */
export const API_MAX_ALLOCATION_BYTES = 256 * 1024 * 1024;

/** A read waiting to be planned with the others of its step. */
interface PendingRead {
  offset: number;
  length: number;
  resolve: (bytes: Buffer) => void;
  reject: (err: unknown) => void;
}

/** A run of the volume that holds data, or reads as zeros (never written, trimmed, zeroed). */
export interface AllocationRun {
  offset: number;
  length: number;
  zero: boolean;
}

/** The API answered with an error, or could not be reached after every attempt. */
export class VolumeApiError extends Error {
  override name = 'VolumeApiError';
  constructor(
    message: string,
    /** HTTP status, or 0 when the API could not be reached. */
    readonly status: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface VolumeDescription {
  volumeId: string;
  sizeBytes: number;
  blockSizeBytes: number;
  pageBlocks: number;
  state: string;
  /** Present on a folding volume. */
  foldedSeq?: number;
  /** The erasure code's data and parity chunks per segment (direct writes encode with them). */
  dataChunks?: number;
  parityChunks?: number;
}

/** A piece of a batch: data (in `parts`, laid end to end, never joined into one buffer), or a run of zeros. */
export type BatchPiece = BatchPartsPiece;

export interface VolumeClientOptions {
  /**
   * How long a request keeps being retried after its first attempt failed (the last attempt
   * starts before the budget ends). Default 120 s; 0 means a single attempt.
   */
  retryBudgetMs?: number;
  /** Attempts per request at most, the first included. Default: no limit but the budget. */
  attemptMax?: number;
  /** Per-attempt timeout. Default 60 s (a 4 MiB batch is encoded and uploaded k+m times). */
  requestTimeoutMs?: number;
  /** Longest pause between attempts. Default 2 s, so service resumes soon after an outage ends. */
  backoffMaxMs?: number;
  /** Signs each attempt. Default: the AWS SDK's default credential chain. */
  sign?: RequestSigner;
  /** Serve this snapshot of the volume, read-only (docs/snapshots.md): reads go to `/snapshots/{id}`. */
  snapshotId?: string;
  /**
   * Read data straight from the sleds with read plans (docs/nbd-gateway.md, "Direct data
   * reads"), falling back to API reads. Default true; snapshots are always read through the API.
   */
  directReads?: boolean;
  /**
   * Encode write-back batches here and upload their chunks with write plans, the head
   * committing them by reference (docs/nbd-gateway.md, "Direct writes"), falling back to API
   * writes. Default false (not faster on the local endpoint yet: docs/nbd-gateway.md, "Speed
   * against s3backer"); needs the volume's geometry from `describe()` first.
   */
  directWrites?: boolean;
  /**
   * Where the bytes of large direct reads land (pretouched.ts). Default: one reserve of
   * `DEFAULT_PRETOUCH_BYTES` shared by every client of the process.
   */
  memory?: PretouchedMemory;
  /** Told why a direct read fell back to an API read, or a direct write to an API write. */
  onFallback?: (reason: string) => void;
}

/** One direct write in this client's chain: its plan's segment, and whether its commit succeeded. */
interface DirectLink {
  planned: Deferred<{ seq: number; segmentId: string } | null>;
  committed: Deferred<boolean>;
  done: boolean;
}


export class VolumeClient {
  private readonly attemptMax: number;
  /** Mutable: the CLI gives up sooner while starting than while serving. */
  retryBudgetMs: number;
  private readonly requestTimeoutMs: number;
  private readonly backoffMaxMs: number;
  private signer: Promise<RequestSigner> | undefined;
  /** Counts of requests sent (attempts included), for logs and the bench. */
  readonly sent = { reads: 0, batches: 0, describes: 0, allocations: 0, plans: 0, writePlans: 0, commits: 0 };
  /** Direct reads: chunk GETs sent, and reads that fell back to the API after a plan or a GET failed. */
  readonly direct = { gets: 0, reads: 0, fallbacks: 0, puts: 0, writes: 0, writeFallbacks: 0 };
  /** Whether write-backs are encoded and uploaded here; turned off for good when the API has no write-plan route. */
  directWrites: boolean;
  /** The volume's segment geometry, once described. */
  private geometry: { k: number; m: number; blockSizeBytes: number } | undefined;
  /** The direct write started last: the next one builds on its plan while it is in flight. */
  private writeTail: DirectLink | undefined;
  /** Whether reads use plans; turned off for good when the API has no plan route. */
  directReads: boolean;
  /** Where the bytes of large direct reads land: memory a worker thread touched in advance (pretouched.ts). */
  readonly memory: PretouchedMemory;
  /** The longest range one read plan is asked for (the head's MAX_PLAN_BYTES); 4 MiB once a head refused more. */
  planMaxBytes = API_MAX_PLAN_BYTES;
  private readonly onFallback: ((reason: string) => void) | undefined;
  /** S3 ranged GETs the API reported making for this client's reads (its x-sledge-ranged-gets header). */
  rangedGets = 0;
  /** The reservation key every read and write presents, once the gateway has attached. */
  reservationKey: string | undefined;

  constructor(
    readonly apiUrl: string,
    readonly volumeId: string,
    opts: VolumeClientOptions = {},
  ) {
    this.attemptMax = opts.attemptMax ?? Number.POSITIVE_INFINITY;
    this.retryBudgetMs = opts.retryBudgetMs ?? 120_000;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 60_000;
    this.backoffMaxMs = opts.backoffMaxMs ?? 2_000;
    if (opts.sign) this.signer = Promise.resolve(opts.sign);
    this.snapshotId = opts.snapshotId;
    this.directReads = (opts.directReads ?? true) && opts.snapshotId === undefined;
    this.memory = opts.memory ?? sharedPretouchedMemory();
    this.directWrites = (opts.directWrites ?? false) && opts.snapshotId === undefined;
    this.onFallback = opts.onFallback;
  }

  /** The snapshot served instead of the volume, read-only. */
  readonly snapshotId: string | undefined;

  private url(path: string): string {
    const base = this.snapshotId === undefined ? `/volumes/${encodeURIComponent(this.volumeId)}` : `/snapshots/${encodeURIComponent(this.snapshotId)}`;
    return `${this.apiUrl.replace(/\/+$/, '')}${base}${path}`;
  }

  /** Sends one request, retrying within the budget; returns the body of a 2xx answer. */
  private async send(
    what: string,
    url: string,
    init: {
      method: string;
      body?: Buffer | readonly Buffer[];
      headers?: Record<string, string>;
      /** Where a 200 answer of exactly this buffer's length lands (http.ts `into`); other answers get their own. */
      into?: Buffer;
    },
    onOk?: (headers: IncomingHttpHeaders) => void,
  ): Promise<Buffer> {
    let last: VolumeApiError | undefined;
    const deadline = Date.now() + this.retryBudgetMs;
    let attempt = 1;
    for (; ; attempt++) {
      let retryAfterMs = 0;
      let res: HttpAnswer | undefined;
      this.signer ??= requestSigner({ apiUrl: this.apiUrl });
      // Signed per attempt: a retry gets a fresh date, within the API's 15-minute window. A
      // signer that cannot find credentials fails the request at once (it is not the network).
      const headers = await (await this.signer)({ method: init.method, url, ...(init.headers ? { headers: init.headers } : {}), ...(init.body ? { body: init.body } : {}) });
      try {
        res = await httpExchange(url, {
          method: init.method,
          headers,
          ...(init.body ? { body: init.body } : {}),
          ...(init.into ? { into: { status: 200, target: init.into } } : {}),
          timeoutMs: this.requestTimeoutMs,
        });
      } catch (err) {
        res = undefined;
        last = new VolumeApiError(`${what}: ${(err as Error).message}`, 0, { cause: err });
      }
      if (res) {
        const { status, body } = res;
        if (status >= 200 && status < 300) {
          onOk?.(res.headers);
          return body;
        }
        last = new VolumeApiError(`${what}: HTTP ${status} ${body.toString('utf8').slice(0, 500)}`, status);
        // 4xx other than 429 will fail the same way again: bad input or a missing volume.
        if (status !== 429 && status < 500) throw last;
        retryAfterMs = Number(res.headers['retry-after'] ?? 0) * 1000;
      }
      const backoff = Math.min(this.backoffMaxMs, 100 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
      const pause = Math.min(this.backoffMaxMs, Math.max(retryAfterMs, backoff));
      if (attempt >= this.attemptMax || Date.now() >= deadline) break;
      await sleep(Math.min(pause, deadline - Date.now()));
    }
    const seconds = ((Date.now() - deadline + this.retryBudgetMs) / 1000).toFixed(1);
    throw new VolumeApiError(`${last!.message} (gave up after ${attempt} attempts in ${seconds} s)`, last!.status, { cause: last });
  }

  async describe(): Promise<VolumeDescription> {
    this.sent.describes++;
    const body = await this.send(`describe ${this.volumeId}`, this.url(''), { method: 'GET' });
    const v = JSON.parse(body.toString('utf8')) as VolumeDescription;
    if (!Number.isSafeInteger(v.sizeBytes) || !Number.isSafeInteger(v.blockSizeBytes) || !Number.isSafeInteger(v.pageBlocks)) {
      throw new VolumeApiError(`describe ${this.volumeId}: the API answered without a usable geometry`, 200);
    }
    const { dataChunks: k, parityChunks: m } = v;
    if (Number.isSafeInteger(k) && Number.isSafeInteger(m) && k! > 0 && m! >= 0) this.geometry = { k: k!, m: m!, blockSizeBytes: v.blockSizeBytes };
    return v;
  }

  /**
   * Reads `length` bytes (block-aligned, at most API_MAX_IO_BYTES) at `offset`: with a read plan
   * and direct chunk GETs when enabled, and through the API when that is off or anything in it
   * fails (the API read is always correct; see docs/nbd-gateway.md, "Direct data reads").
   * Reads asked for in the same step (a read-ahead of several 4 MiB windows) that continue one
   * another share one plan of up to `planMaxBytes`; each gets its part of the fetched bytes.
   */
  read(offset: number, length: number): Promise<Buffer> {
    if (length > API_MAX_IO_BYTES) return Promise.reject(new RangeError(`a read through the API is at most ${API_MAX_IO_BYTES} bytes, not ${length}`));
    if (!this.directReads) return this.readThroughApi(offset, length);
    return new Promise((resolve, reject) => {
      this.pendingReads.push({ offset, length, resolve, reject });
      if (this.pendingReads.length === 1) queueMicrotask(() => this.sendPendingReads());
    });
  }

  /** Reads waiting for the end of the current step, to be planned together. */
  private pendingReads: PendingRead[] = [];

  private sendPendingReads(): void {
    const reads = this.pendingReads.sort((x, y) => x.offset - y.offset);
    this.pendingReads = [];
    let group: PendingRead[] = [];
    for (const r of reads) {
      const last = group[group.length - 1];
      const groupStart = group[0]?.offset ?? r.offset;
      if (last && (last.offset + last.length !== r.offset || r.offset + r.length - groupStart > this.planMaxBytes)) {
        void this.readGroup(group);
        group = [];
      }
      group.push(r);
    }
    if (group.length > 0) void this.readGroup(group);
  }

  /** One plan for reads that continue one another, its GETs, and each read's part; any failure sends each read through the API. */
  private async readGroup(group: PendingRead[]): Promise<void> {
    const offset = group[0]!.offset;
    const last = group[group.length - 1]!;
    const length = last.offset + last.length - offset;
    const throughApi = (after?: () => void) => {
      for (const r of group)
        this.readThroughApi(r.offset, r.length).then((bytes) => {
          after?.();
          r.resolve(bytes);
        }, r.reject);
    };
    let plan: ReadPlan;
    try {
      plan = await this.readPlan(offset, length);
    } catch (err) {
      if (group.length > 1 && err instanceof VolumeApiError && err.status === 400) {
        // A head whose plans are at most 4 MiB (an older API): one plan per read from now on.
        this.planMaxBytes = API_MAX_IO_BYTES;
        this.onFallback?.(`read plan @${offset}+${length}: ${err.message}; planning at most ${API_MAX_IO_BYTES} bytes at a time from now on`);
        for (const r of group) void this.readGroup([r]);
        return;
      }
      // Refusals (404, 409, 400) come back from the API read in the same words; an API without
      // the plan route answers 404 to the plan and 200 to the read: then plans are turned off.
      this.direct.fallbacks++;
      this.onFallback?.(`read plan @${offset}+${length}: ${(err as Error).message}`);
      throughApi(() => {
        if (this.directReads && err instanceof VolumeApiError && (err.status === 404 || err.status === 405)) {
          this.directReads = false;
          this.onFallback?.('the API has no read-plan route: reading through the API from now on');
        }
      });
      return;
    }
    let bytes: Buffer;
    try {
      this.direct.gets += plan.gets.length;
      this.rangedGets += plan.gets.length;
      bytes = await readPlanned(plan, this.requestTimeoutMs, (n) => this.memory.take(n));
      this.direct.reads++;
    } catch (err) {
      this.direct.fallbacks++;
      this.onFallback?.(`direct read @${offset}+${length}: ${(err as Error).message}; reading through the API`);
      throughApi();
      return;
    }
    for (const r of group) r.resolve(bytes.subarray(r.offset - offset, r.offset - offset + r.length));
  }

  /** The head's plan of a read (`GET /volumes/{id}/read-plan`), checked against the range asked. */
  async readPlan(offset: number, length: number): Promise<ReadPlan> {
    this.sent.plans++;
    const body = await this.send(`read plan ${this.volumeId} @${offset}+${length}`, this.url(`/read-plan?offset=${offset}&length=${length}`), {
      method: 'GET',
      headers: this.keyHeader(),
    });
    let plan: ReadPlan;
    try {
      plan = JSON.parse(body.toString('utf8')) as ReadPlan;
      checkPlan(plan, offset, length);
    } catch (err) {
      throw new VolumeApiError(`read plan ${this.volumeId} @${offset}+${length}: unusable answer: ${(err as Error).message}`, 200, { cause: err });
    }
    return plan;
  }

  /** Reads `length` bytes (block-aligned, at most API_MAX_IO_BYTES) at `offset` through the API (the head fetches the chunks). */
  async readThroughApi(offset: number, length: number): Promise<Buffer> {
    if (length > API_MAX_IO_BYTES) throw new RangeError(`a read through the API is at most ${API_MAX_IO_BYTES} bytes, not ${length}`);
    this.sent.reads++;
    const body = await this.send(
      `read ${this.volumeId} @${offset}+${length}`,
      this.url(`/data?offset=${offset}&length=${length}`),
      // The bytes land in pretouched memory when the read is large, as a direct read's do.
      { method: 'GET', headers: this.keyHeader(), into: this.memory.take(length) },
      (h) => {
        this.rangedGets += Number(h['x-sledge-ranged-gets'] ?? 0);
      },
    );
    // Pair assertion: the API must answer with exactly the bytes asked for.
    if (body.length !== length) throw new VolumeApiError(`read ${this.volumeId} @${offset}+${length}: got ${body.length} bytes`, 200);
    return body;
  }

  /** Which parts of a block-aligned range (at most API_MAX_ALLOCATION_BYTES) hold data: runs covering it exactly. */
  async allocation(offset: number, length: number): Promise<AllocationRun[]> {
    this.sent.allocations++;
    const body = await this.send(`allocation ${this.volumeId} @${offset}+${length}`, this.url(`/allocation?offset=${offset}&length=${length}`), {
      method: 'GET',
      headers: this.keyHeader(),
    });
    const { runs } = JSON.parse(body.toString('utf8')) as { runs: AllocationRun[] };
    // Pair assertion: the runs must cover the range exactly, in order.
    let pos = offset;
    for (const r of runs) {
      if (r.offset !== pos || !(r.length > 0)) throw new VolumeApiError(`allocation ${this.volumeId} @${offset}+${length}: runs do not cover the range`, 200);
      pos += r.length;
    }
    if (pos !== offset + length) throw new VolumeApiError(`allocation ${this.volumeId} @${offset}+${length}: runs end at ${pos}`, 200);
    return runs;
  }

  /**
   * Writes a batch (at most API_MAX_IO_BYTES of data and API_MAX_PAGES_PER_BATCH pages) as one
   * segment: directly (encoded here, chunks uploaded with a write plan, committed by reference)
   * when enabled and the batch carries data, else, or when anything in that fails, through the API.
   */
  async writeBatch(pieces: readonly BatchPiece[]): Promise<void> {
    if (this.directWrites && this.geometry && pieces.some((p) => !('zero' in p)) && (await this.writeDirect(pieces, this.geometry))) return;
    await this.writeBatchThroughApi(pieces);
  }

  /**
   * One direct write; true once committed, false when it fell back (the caller then writes the
   * batch through the API, which is safe whatever became of this attempt: the same bytes to the
   * same blocks, and no newer write to them is in flight). While the direct write started
   * before this one is in flight, this one plans on its segment and commits after it answered,
   * so uploads overlap and commits stay in order.
   */
  private async writeDirect(pieces: readonly BatchPiece[], g: { k: number; m: number; blockSizeBytes: number }): Promise<boolean> {
    const prev = this.writeTail;
    const link: DirectLink = { planned: deferred(), committed: deferred(), done: false };
    this.writeTail = link;
    const inFlight = prev !== undefined && !prev.done;
    try {
      const batch = await encodeDirectBatch(pieces, g.k, g.m, g.blockSizeBytes);
      const after = inFlight ? await prev.planned.promise : null;
      let plan: WritePlan;
      try {
        plan = await this.writePlan({ extents: batch.extents, chunkSizeBytes: batch.stripes.chunkSizeBytes, crcs: batch.stripes.crcs, ...(after ? { after } : {}) });
      } catch (err) {
        if (err instanceof VolumeApiError && (err.status === 400 || err.status === 404 || err.status === 405)) {
          this.directWrites = false;
          this.onFallback?.(`the API refused a write plan (${err.message}): writing through the API from now on`);
        }
        throw err;
      }
      checkWritePlan(plan, batch);
      link.planned.resolve({ seq: plan.descriptor.seq, segmentId: plan.descriptor.segmentId });
      const puts = await putChunks(plan, batch, this.requestTimeoutMs);
      this.direct.puts += puts; // after the await: `+= await` would add to a stale count
      if (inFlight) await prev.committed.promise;
      await this.commit(plan);
      this.direct.writes++;
      link.committed.resolve(true);
      return true;
    } catch (err) {
      link.planned.resolve(null);
      link.committed.resolve(false);
      this.direct.writeFallbacks++;
      this.onFallback?.(`direct write of ${pieces.length} extents: ${(err as Error).message}; writing through the API`);
      return false;
    } finally {
      link.done = true;
    }
  }

  /** A write plan (`POST /volumes/{id}/write-plan`) for a batch encoded here. */
  async writePlan(body: { extents: PlanExtent[]; chunkSizeBytes: number; crcs: number[][]; after?: { seq: number; segmentId: string } }): Promise<WritePlan> {
    this.sent.writePlans++;
    const answer = await this.send(`write plan ${this.volumeId}`, this.url('/write-plan'), {
      method: 'POST',
      body: Buffer.from(JSON.stringify(body)),
      headers: { 'content-type': 'application/json', ...this.keyHeader() },
    });
    return JSON.parse(answer.toString('utf8')) as WritePlan;
  }

  /** Commits a planned segment whose chunks are uploaded (`POST /volumes/{id}/commit`); a repeat answers the same. */
  async commit(plan: Pick<WritePlan, 'descriptor' | 'locations'>): Promise<{ commitSeq: number; segmentId: string }> {
    this.sent.commits++;
    const answer = await this.send(`commit ${this.volumeId} ${plan.descriptor.segmentId}`, this.url('/commit'), {
      method: 'POST',
      body: Buffer.from(JSON.stringify({ descriptor: plan.descriptor, locations: plan.locations })),
      headers: { 'content-type': 'application/json', ...this.keyHeader() },
    });
    return JSON.parse(answer.toString('utf8')) as { commitSeq: number; segmentId: string };
  }

  /** Writes a batch through the API (`POST /volumes/{id}/batch`: the head encodes and uploads). */
  async writeBatchThroughApi(pieces: readonly BatchPiece[]): Promise<void> {
    this.sent.batches++;
    const body = encodeBatchParts(pieces);
    await this.send(`batch ${this.volumeId} (${pieces.length} extents)`, this.url('/batch'), {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/vnd.sledge.batch', ...this.keyHeader() },
    });
  }

  private keyHeader(): Record<string, string> {
    return this.reservationKey ? { 'x-sledge-reservation-key': this.reservationKey } : {};
  }

  /** Renews this reader's read lease (multi-attach, docs/nbd-gateway.md) and returns what it learned. */
  async renewReadLease(body: { key: string; leaseMs: number; ackEpoch: number | null; closeAtSeq?: number }): Promise<ReadLeaseAnswer> {
    const answer = await this.send(`read lease of ${this.volumeId}`, this.url('/read-lease'), {
      method: 'POST',
      body: Buffer.from(JSON.stringify({ action: 'renew', ...body })),
      headers: { 'content-type': 'application/json' },
    });
    return JSON.parse(answer.toString('utf8')) as ReadLeaseAnswer;
  }

  /** Gives the read lease back (a clean stop). */
  async releaseReadLease(key: string): Promise<void> {
    await this.send(`read lease release on ${this.volumeId}`, this.url('/read-lease'), {
      method: 'POST',
      body: Buffer.from(JSON.stringify({ action: 'release', key })),
      headers: { 'content-type': 'application/json' },
    });
  }

  /** Sends a reservation command (docs/reservations.md) and returns the new state. */
  async reserve(command: { action: string; key: string; type?: string; victimKey?: string }): Promise<ReservationState> {
    const body = await this.send(`reservation ${command.action} on ${this.volumeId}`, this.url('/reservations'), {
      method: 'POST',
      body: Buffer.from(JSON.stringify(command)),
      headers: { 'content-type': 'application/json' },
    });
    return JSON.parse(body.toString('utf8')) as ReservationState;
  }
}

/** What the API answers to a read-lease renewal (docs/nbd-gateway.md, "The reader's side"). */
export interface ReadLeaseAnswer {
  leaseMs: number;
  ackedEpoch: number;
  intent: { epoch: number; open: boolean };
  headSeq: number;
}

/** What the API answers to reservation commands. */
export interface ReservationState {
  generation: number;
  registrants: Array<{ key: string; generation: number }>;
  reservation: { holder: string; type: string } | null;
}
