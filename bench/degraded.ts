/**
 * Degraded reads and the head's own CPU per 4 MiB (docs/page-map.md, "Reads").
 *
 * Everything goes through the head's real handler (`lambdas/api.ts`, the module Lambda runs),
 * called in this process with the API Gateway event the local API would build, against the
 * local endpoint: page map in DynamoDB, chunks on the sleds. The API Gateway side (turning the
 * HTTP body into the event's base64 and back) is not the head's work and is done outside the
 * measurements.
 *
 * - Throughput: READS reads of 4 MiB, CONCURRENCY at a time, from a healthy volume and from a
 *   copy of it (same bytes, same layout) whose every segment lost its first m data chunks
 *   (deleted from the sleds), alternating ROUNDS times; the best round of each. The degraded
 *   volume's first pass (each segment's lost chunks found by their 404s) is shown on its own.
 *   Every byte read is compared with what was written.
 * - Head CPU: the same requests one at a time, this process's user + system CPU (all threads,
 *   so the native codec's libuv threads count) around each handler call.
 * - Unavoidable work, timed alone on the same bytes: base64 of the body, Reed-Solomon encode
 *   (write) or reconstruct (degraded read) of the 4 MiB as k shards in one codec call, and
 *   CRC32C of every byte that is checksummed (k+m chunks written, k chunks read).
 * - The transfer alone, beside it: the same chunk requests without the SDK, k+m PUTs of a
 *   chunk's bytes at once (write) or k ranged GETs of a chunk's data at once (read), each
 *   presigned (so signing counts) and sent with the raw HTTP/1.1 client the head and the gateway
 *   use for chunks (shared/net/http.ts `rawExchange`, kept-alive connections, bodies read in
 *   place), without the head's retries, counting and fault rules. What no head that stores
 *   chunks on S3 over HTTP avoids.
 */
import { randomFillSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { rawExchange } from '#shared/net/http.ts';
import { toApiGatewayEvent } from '#local/http-adapter.ts';
import { presignChunkPut, presignChunkRange } from '#shared/aws/presign.ts';
import { requestCounts, resetRequestCounts, s3 } from '#shared/aws/clients.ts';
import { crc32c } from '#shared/data/crc32c.ts';
import { codec } from '#shared/data/erasure.ts';
import { forgetSegment, readView, segmentRecordsFor } from '#shared/data/read.ts';
import { setReadRepair } from '#shared/data/repair-requests.ts';
import { collectVolume } from '#shared/maintenance/gc.ts';
import { ENV } from '#shared/core/config.ts';
import { forgetLostChunks } from '#shared/data/segment-reader.ts';
import type { SegmentRecord } from '#shared/core/records.ts';
import { pageMap, workQueue } from '#shared/ports.ts';

const MiB = 1024 * 1024;
const IO = 4 * MiB;
const K = 4;
const M = 2;
const WRITES = 16;
const READS = 16;
const CONCURRENCY = 4;
const ROUNDS = 5;

export interface DegradedBenchDeps {
  table(rows: Array<Record<string, string | number>>): void;
  section(title: string): void;
}

type Handler = (event: APIGatewayProxyEventV2) => Promise<APIGatewayProxyStructuredResultV2>;

function event(method: string, url: string, body?: Buffer, contentType = 'application/octet-stream'): APIGatewayProxyEventV2 {
  return toApiGatewayEvent({
    method,
    url,
    headers: { host: 'bench.local', ...(body ? { 'content-type': contentType, 'content-length': String(body.length) } : {}) },
    body: body ?? Buffer.alloc(0),
  });
}

async function call(handler: Handler, ev: APIGatewayProxyEventV2): Promise<APIGatewayProxyStructuredResultV2> {
  const res = await handler(ev);
  if ((res.statusCode ?? 500) >= 300) throw new Error(`${ev.requestContext.http.method} ${ev.rawPath}?${ev.rawQueryString}: ${res.statusCode} ${res.body}`);
  return res;
}

/** Garbage-collection pauses observed so far (ms, main thread), to show what part of the head's CPU they are. */
let gcPauseMs = 0;
const gcObserver = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcPauseMs += e.duration;
});

/** CPU milliseconds (user + system, all threads) of `work`. */
async function cpuMs(work: () => Promise<unknown> | unknown): Promise<number> {
  const before = process.cpuUsage();
  await work();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1000;
}

/**
 * With SLEDGE_BENCH_PROFILE=<dir>, `work` runs under the V8 CPU profiler and its profile is
 * written to <dir>/<name>.cpuprofile (open it in Chrome DevTools): the head's write and read
 * paths, without the setup around them.
 */
async function profiled<T>(name: string, work: () => Promise<T>): Promise<T> {
  const dir = process.env.SLEDGE_BENCH_PROFILE;
  if (!dir) return work();
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 100 });
  await session.post('Profiler.start');
  try {
    return await work();
  } finally {
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(join(dir, `${name}.cpuprofile`), JSON.stringify(profile));
    session.disconnect();
  }
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Median CPU ms of `work` over 9 runs after 2 warm-up runs. */
async function medianCpuMs(work: () => Promise<unknown> | unknown): Promise<number> {
  for (let i = 0; i < 2; i++) await work();
  const runs: number[] = [];
  for (let i = 0; i < 9; i++) runs.push(await cpuMs(work));
  return median(runs);
}

export async function benchDegraded(deps: DegradedBenchDeps): Promise<void> {
  // The reads here must keep finding the chunks this bench deleted: they ask for no repairs,
  // which the control plane's worker would otherwise carry out in the middle of the rounds
  // (docs/evacuation.md, "Read repair"). What they measure is the degraded read itself, as it
  // is until a repair lands.
  setReadRepair(false);
  // Nor do the chunks it deletes on purpose retire their drives (docs/evacuation.md, "Drives
  // that keep losing chunks"): an evacuation would run beside the measurements.
  const threshold = process.env[ENV.lostChunkRetireThreshold];
  process.env[ENV.lostChunkRetireThreshold] = '0';
  try {
    await degradedRounds(deps);
  } finally {
    setReadRepair(undefined);
    if (threshold === undefined) delete process.env[ENV.lostChunkRetireThreshold];
    else process.env[ENV.lostChunkRetireThreshold] = threshold;
  }
}

async function degradedRounds({ table, section }: DegradedBenchDeps): Promise<void> {
  section(`Degraded reads (m = ${M} data chunks of every segment lost) and the head's CPU per 4 MiB, through the head's handler`);
  const { handler } = (await import('#lambdas/api.ts')) as { handler: Handler };
  const created = await Promise.all(
    [0, 1].map(async () => {
      const spec = { sizeBytes: WRITES * IO, dataChunks: K, parityChunks: M };
      const res = await call(handler, event('POST', '/volumes', Buffer.from(JSON.stringify(spec)), 'application/json'));
      return (JSON.parse(res.body!) as { volumeId: string }).volumeId;
    }),
  );
  const [healthyVol, degradedVol] = created as [string, string];
  const payloads = Array.from({ length: WRITES }, () => randomFillSync(Buffer.allocUnsafe(IO)));

  // Writes, one at a time, both volumes: head CPU per 4 MiB write (events built beforehand).
  gcObserver.observe({ entryTypes: ['gc'] });
  const writeCpu: number[] = [];
  const gcWrites0 = gcPauseMs;
  for (const vol of [healthyVol, degradedVol]) {
    const events = payloads.map((p, i) => event('PUT', `/volumes/${vol}/data?offset=${i * IO}`, p));
    await profiled(`write-${vol === healthyVol ? 1 : 2}`, async () => {
      for (const ev of events) writeCpu.push(await cpuMs(() => call(handler, ev)));
    });
  }

  const gcPerWrite = (gcPauseMs - gcWrites0) / (2 * WRITES);

  // Lose the first m data chunks of every segment of the degraded volume.
  const views = await Promise.all(payloads.map((_, i) => readView(degradedVol, i * IO, IO)));
  const refs = [...new Set(views.flatMap((v) => v.extents.map((e) => e.seg)).filter((s): s is string => s !== null))];
  const records = await segmentRecordsFor(refs);
  let deleted = 0;
  for (const rec of records.values()) {
    for (let i = 0; i < M; i++) {
      const loc = rec.locations[i]!;
      await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
      deleted++;
    }
  }

  const readEvents = (vol: string) => Array.from({ length: READS }, (_, i) => event('GET', `/volumes/${vol}/data?length=${IO}&offset=${(i % WRITES) * IO}`));
  // Decoded into one reused buffer: the bench's own garbage would otherwise be collected during
  // (and charged to) the head's next request.
  const decoded = Buffer.allocUnsafeSlow(IO + 8);
  const check = (res: APIGatewayProxyStructuredResultV2, i: number, what: string) => {
    const n = decoded.write(res.body!, 'base64');
    if (n !== IO || !decoded.subarray(0, n).equals(payloads[i % WRITES]!)) throw new Error(`${what} read ${i} returned wrong bytes`);
  };
  /** Wall seconds of READS reads, CONCURRENCY at a time; every result checked after. */
  const timedReads = async (vol: string, what: string): Promise<number> => {
    const events = readEvents(vol);
    const results: APIGatewayProxyStructuredResultV2[] = new Array(READS);
    const start = process.hrtime.bigint();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async (_, w) => {
        for (let i = w; i < READS; i += CONCURRENCY) results[i] = await call(handler, events[i]!);
      }),
    );
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    results.forEach((r, i) => check(r, i, what));
    return seconds;
  };
  // Warm-up (connections, segment records; the degraded volume's first reads find its lost
  // chunks, answered 404, and re-read each segment record), then alternating rounds.
  await timedReads(healthyVol, 'healthy');
  resetRequestCounts();
  const degradedCold = await timedReads(degradedVol, 'degraded');
  const coldCounts = requestCounts();
  let healthyBest = Infinity;
  let degradedBest = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    healthyBest = Math.min(healthyBest, await timedReads(healthyVol, 'healthy'));
    degradedBest = Math.min(degradedBest, await timedReads(degradedVol, 'degraded'));
  }

  // Head CPU per read and exact request counts, one read at a time.
  const serialReads = async (vol: string, what: string) => {
    const events = readEvents(vol);
    const cpu: number[] = [];
    const gc0 = gcPauseMs;
    resetRequestCounts();
    for (const [i, ev] of events.entries()) {
      let res: APIGatewayProxyStructuredResultV2 | undefined;
      cpu.push(await cpuMs(async () => (res = await call(handler, ev))));
      check(res!, i, what);
    }
    return { cpu, counts: requestCounts(), gcPerRead: (gcPauseMs - gc0) / READS };
  };
  const healthy = await profiled('read-healthy', () => serialReads(healthyVol, 'healthy'));
  const degraded = await profiled('read-degraded', () => serialReads(degradedVol, 'degraded'));

  // The unavoidable work, alone, on the same bytes.
  const c = codec();
  const payload = payloads[0]!;
  const body = payload.toString('base64');
  const shardBytes = IO / K;
  const dataShards = Array.from({ length: K }, (_, i) => payload.subarray(i * shardBytes, (i + 1) * shardBytes));
  const parity = await c.encode(K, M, dataShards);
  const survivors = [...dataShards.map((d, i) => (i < M ? null : d)), ...parity];
  const crcAll = (bufs: readonly Buffer[]) => {
    let x = 0;
    for (const b of bufs) for (let o = 0; o < b.length; o += 64 * 1024) x ^= crc32c(b.subarray(o, o + 64 * 1024));
    return x;
  };
  const base64Decode = await medianCpuMs(() => Buffer.from(body, 'base64'));
  const base64Encode = await medianCpuMs(() => payload.toString('base64'));
  const encode = await medianCpuMs(() => c.encode(K, M, dataShards));
  const reconstruct = await medianCpuMs(() => c.reconstruct(K, M, survivors));
  const crcWrite = await medianCpuMs(() => crcAll([...dataShards, ...parity]));
  const crcRead = await medianCpuMs(() => crcAll(dataShards));
  const transfer = await transferAlone(records.values().next().value!.locations[M]!, payload);
  const floorWrite = base64Decode + encode + crcWrite;
  const floorRead = crcRead + base64Encode;
  const floorDegraded = crcRead + reconstruct + base64Encode;

  const mbps = (seconds: number) => ((READS * IO) / seconds / 1e6).toFixed(1);
  const perRead = (n: number | undefined) => ((n ?? 0) / READS).toFixed(2);
  table([
    { read: 'healthy', 'MB/s': mbps(healthyBest), 'x healthy': '1.00', 'S3 GET per read': perRead(healthy.counts.requests['S3:GetObject']), 'DDB requests per read': perRead(ddb(healthy.counts.requests)) },
    {
      read: `degraded (${M} of ${K} data chunks lost), lost chunks known`,
      'MB/s': mbps(degradedBest),
      'x healthy': (healthyBest / degradedBest).toFixed(2),
      'S3 GET per read': perRead(degraded.counts.requests['S3:GetObject']),
      'DDB requests per read': perRead(ddb(degraded.counts.requests)),
    },
    {
      read: 'degraded, first read of each segment',
      'MB/s': mbps(degradedCold),
      'x healthy': (healthyBest / degradedCold).toFixed(2),
      'S3 GET per read': perRead(coldCounts.requests['S3:GetObject']),
      'DDB requests per read': perRead(ddb(coldCounts.requests)),
    },
  ]);
  console.log(
    `(${READS} reads of 4 MiB, ${CONCURRENCY} at a time, best of ${ROUNDS} alternating rounds; ${deleted} chunk objects deleted from ${records.size} segments; codec ${c.name}; every read compared byte for byte; reads ask for no repairs here, so the lost chunks stay lost)`,
  );
  gcObserver.disconnect();
  const row = (what: string, head: number, gc: number, floor: number, parts: string, moved: number) => ({
    'per 4 MiB': what,
    'head CPU ms (median)': head.toFixed(1),
    'of which GC pauses (mean)': gc.toFixed(1),
    'unavoidable ms': floor.toFixed(1),
    'head / unavoidable': (head / floor).toFixed(2),
    'unavoidable = ': parts,
    'transfer alone ms': moved.toFixed(1),
    'head / (unavoidable + transfer)': (head / (floor + moved)).toFixed(2),
  });
  table([
    row(
      'write',
      median(writeCpu),
      gcPerWrite,
      floorWrite,
      `base64 decode ${base64Decode.toFixed(1)} + RS ${K}+${M} encode ${encode.toFixed(1)} + CRC32C of ${K + M} MiB ${crcWrite.toFixed(1)}`,
      transfer.put,
    ),
    row('read, healthy', median(healthy.cpu), healthy.gcPerRead, floorRead, `CRC32C of 4 MiB ${crcRead.toFixed(1)} + base64 encode ${base64Encode.toFixed(1)}`, transfer.get),
    row(
      `read, degraded`,
      median(degraded.cpu),
      degraded.gcPerRead,
      floorDegraded,
      `CRC32C ${crcRead.toFixed(1)} + RS reconstruct of ${M} ${reconstruct.toFixed(1)} + base64 encode ${base64Encode.toFixed(1)}`,
      transfer.get,
    ),
  ]);
  console.log(
    `(head CPU: this process around each handler call, one request at a time, ${WRITES * 2} writes and ${READS} reads of each kind; unavoidable: each part alone, median of 9; ` +
      `transfer alone: ${K + M} presigned PUTs of ${IO / K} bytes, or ${K} presigned ranged GETs of as many, at once, the raw chunk client alone, median of 9)`,
  );

  await measureListingCheck(table, healthyVol, degradedVol, deleted);

  await measureRepair(table, degradedVol, records, async () => {
    const res = await serialReads(degradedVol, 'repaired');
    return { gets: res.counts.requests['S3:GetObject'] ?? 0, median: median(res.cpu) };
  });
}

/**
 * The listing check of a GC pass (docs/evacuation.md, "The listing check"): one pass over the
 * healthy copy and one over the degraded copy, each after a first pass that takes whatever
 * checkpoint or fold is due, with repair requests off (asking adds one SendMessageBatch per ten
 * chunks). Exact S3 and DynamoDB requests of each pass; what it found missing.
 */
async function measureListingCheck(table: DegradedBenchDeps['table'], healthyVol: string, degradedVol: string, lost: number): Promise<void> {
  const rows: Array<Record<string, string | number>> = [];
  for (const [name, vol] of [
    ['healthy', healthyVol],
    [`degraded (${lost} chunks deleted)`, degradedVol],
  ] as const) {
    await collectVolume(vol, { queueContinuation: false });
    resetRequestCounts();
    const start = performance.now();
    const r = await collectVolume(vol, { queueContinuation: false });
    const ms = performance.now() - start;
    const c = requestCounts().requests;
    const s3Other = Object.entries(c)
      .filter(([k]) => k.startsWith('S3:') && k !== 'S3:ListObjectsV2')
      .map(([k, n]) => `${k.slice(3)} ${n}`);
    rows.push({
      'GC pass': name,
      segments: r.segments,
      'chunks found missing': r.chunksMissing ?? 0,
      'S3 LIST': c['S3:ListObjectsV2'] ?? 0,
      'other S3': s3Other.join(', ') || '0',
      'DDB requests': ddb(c),
      ms: ms.toFixed(0),
    });
  }
  table(rows);
  console.log("(each pass after a first one on the same volume; requests counted in this process, which also runs the control plane's idle pollers)");
}

/**
 * Read repair of the degraded copy (docs/evacuation.md, "Read repair"): one repair request per
 * lost chunk, as a read sends it, and the control plane's worker (in this process) replacing
 * them; wall time until every record points at a new copy, and the worker's exact S3 and
 * DynamoDB requests per repaired chunk (the bench's own polling of the records subtracted).
 * Then the copy is read again by a head that has no record cached: healthy reads.
 */
async function measureRepair(
  table: DegradedBenchDeps['table'],
  vol: string,
  records: Map<string, SegmentRecord>,
  readAgain: () => Promise<{ gets: number; median: number }>,
): Promise<void> {
  const lost = [...records.values()].flatMap((rec) => Array.from({ length: M }, (_, i) => ({ rec, i, old: rec.locations[i]! })));
  resetRequestCounts();
  const start = performance.now();
  for (const { rec, i, old } of lost) {
    await workQueue().send({ type: 'repair-chunk', volumeId: rec.volumeId, segmentId: rec.segmentId, chunk: i, bucket: old.bucket, key: old.key });
  }
  let polls = 0;
  let pending = lost;
  while (pending.length > 0) {
    if (performance.now() - start > 300_000) throw new Error(`read repair: ${pending.length} of ${lost.length} chunks not repaired after 300 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const still: typeof pending = [];
    for (const p of pending) {
      polls++;
      const now = (await pageMap().getSegmentRecord(p.rec.volumeId, p.rec.segmentId))?.locations[p.i];
      if (now && now.bucket === p.old.bucket && now.key === p.old.key) still.push(p);
    }
    pending = still;
  }
  const seconds = (performance.now() - start) / 1000;
  const counts = requestCounts().requests;
  counts['DynamoDB:GetItem'] = (counts['DynamoDB:GetItem'] ?? 0) - polls;
  for (const ref of records.keys()) forgetSegment(ref);
  forgetLostChunks();
  const after = await readAgain();
  const per = (op: string) => ((counts[op] ?? 0) / lost.length).toFixed(2);
  const ddbPerChunk = (ddb(counts) / lost.length).toFixed(2);
  table([
    {
      'read repair': `${lost.length} lost chunks of ${records.size} segments`,
      seconds: seconds.toFixed(1),
      'chunks/s': (lost.length / seconds).toFixed(1),
      'S3 GET / PUT / DELETE per chunk': `${per('S3:GetObject')} / ${per('S3:PutObject')} / ${per('S3:DeleteObject')}`,
      'DDB requests per chunk': ddbPerChunk,
      'S3 GET per read after': (after.gets / READS).toFixed(2),
      'head CPU ms per read after': after.median.toFixed(1),
    },
  ]);
  console.log(
    "(the repair requests sent as a read sends them; the control plane's worker in this process rebuilds each chunk from k others, PUTs it to another drive and moves the record; the reads after are by a head with no record cached)",
  );
}

/**
 * CPU ms (median of 9) of moving one write's or one read's chunk bytes and nothing else: K+M
 * presigned PUTs of a chunk's worth of `payload`'s bytes at once, and K presigned ranged GETs
 * of a chunk's data at once (of the chunk object at `readable`), each with the raw chunk client
 * over kept-alive connections into memory already in use. The PUTs go to fresh keys beside
 * `readable` and are deleted after.
 */
async function transferAlone(readable: { bucket: string; key: string }, payload: Buffer): Promise<{ put: number; get: number }> {
  const shard = IO / K;
  // The client the head and the gateway send chunk requests with (raw sockets, kept-alive
  // connections, the body read into a given buffer).
  const send = async (method: 'PUT' | 'GET', url: string, headers: Record<string, string>, body?: Buffer, into?: Buffer) => {
    const answer = await rawExchange(url, { method, headers, timeoutMs: 30_000, ...(body ? { body } : {}), ...(into ? { into: { status: 206, target: into } } : {}) });
    if (answer.status >= 300) throw new Error(`${method} ${url.split('?')[0]}: ${answer.status}`);
  };
  const written: Array<{ bucket: string; key: string }> = [];
  let run = 0;
  const shards = Array.from({ length: K + M }, (_, i) => payload.subarray((i % K) * shard, (i % K + 1) * shard));
  const crcs = shards.map((b) => crc32c(b));
  const put = await medianCpuMs(async () => {
    const r = run++;
    await Promise.all(
      shards.map(async (body, i) => {
        const loc = { bucket: readable.bucket, key: `${readable.key}.bench-transfer-${r}-${i}` };
        written.push(loc);
        const { url, headers } = await presignChunkPut(loc, body.length, crcs[i]!, 60);
        await send('PUT', url, headers, body);
      }),
    );
  });
  const targets = Array.from({ length: K }, () => Buffer.allocUnsafeSlow(shard));
  const get = await medianCpuMs(() =>
    Promise.all(
      targets.map(async (into) => {
        const url = await presignChunkRange(readable, 0, shard, 60);
        await send('GET', url, { range: `bytes=0-${shard - 1}` }, undefined, into);
      }),
    ),
  );
  for (const loc of written) await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
  return { put, get };
}

function ddb(requests: Record<string, number>): number {
  return Object.entries(requests)
    .filter(([k]) => k.startsWith('DynamoDB:'))
    .reduce((n, [, v]) => n + v, 0);
}
