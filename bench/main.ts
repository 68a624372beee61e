/**
 * `npm run bench`: speed and cost, measured in one run on this machine.
 *
 * Speed is reported as ratios against a baseline measured in the same run (Buffer.copy for
 * the codec; raw S3 PUT/GET of the same bytes on the same endpoint for the API), because the
 * machines are shared and noisy. Request counts are exact: every AWS SDK request the head
 * makes is counted by middleware (shared/aws/clients.ts). DynamoDB units are computed from item sizes
 * by DynamoDB's published rules (shared/aws/capacity.ts), because local endpoints do not report
 * real consumed capacity.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { startControlPlane } from '#local/control-plane.ts';
import { BatchGetItemCommand, GetItemCommand } from '@aws-sdk/client-dynamodb';
import { dynamo, requestCounts, resetRequestCounts, s3, type RequestCounts } from '#shared/aws/clients.ts';
import { itemSize } from '#shared/aws/capacity.ts';
import { config } from '#shared/core/config.ts';
import { encodeSegment, newSegmentId } from '#shared/data/segments.ts';
import { benchCheckpoints } from './checkpoints.ts';
import { DeleteMessageBatchCommand, ReceiveMessageCommand } from '@aws-sdk/client-sqs';
import { sqs } from '#shared/aws/clients.ts';
import { getDrive, updateDrive } from '#shared/aws/drive-registry.ts';
import { listDrives, reactivateDrive, forgetDriveStates } from '#shared/maintenance/drives.ts';
import { retireDrive } from '#shared/maintenance/evacuation.ts';
import { collectVolume } from '#shared/maintenance/gc.ts';
import { foldVolume } from '#shared/maintenance/fold.ts';
import { pageMap } from '#shared/ports.ts';
import { listVolumeChunks } from '#shared/aws/chunk-store.ts';
import { createVolume as createVolumeInProcess } from '#shared/control/volumes.ts';
import { writePieces } from '#shared/data/write.ts';
import { handleWorkEvent } from '#shared/maintenance/worker.ts';
import { toSqsRecord } from '#local/sqs-poller.ts';
import { benchCodec } from './codec.ts';
import { benchCrc } from './crc.ts';
import { benchNbd } from './nbd.ts';
import { VolumeClient } from '#gateway/volume-client.ts';
import { invariant } from '#shared/core/errors.ts';
import { benchSnapshots } from './snapshots.ts';
import { benchBackup } from './backup.ts';
import { benchGroups } from './groups.ts';
import { benchDegraded } from './degraded.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** AWS list prices, us-east-1 (S3 Standard requests; DynamoDB on-demand since Nov 2024). */
const PRICE = {
  s3PutPerRequest: 0.005 / 1000,
  s3GetPerRequest: 0.0004 / 1000,
  dynamoWritePerUnit: 0.625 / 1e6,
  dynamoReadPerUnit: 0.125 / 1e6,
};

/**
 * `npm run bench -- <name> ...` runs only the named parts (codec, encode, crc, evacuation, gc,
 * throughput, endpoint, cost, fold-reads, checkpoints, fencing, snapshots, groups, nbd, nbd-cost, backup, degraded); no names runs
 * them all. `nbd-cost` is the request-cost part of `nbd` alone, without the s3backer comparison.
 */
const only = new Set(process.argv.slice(2));
/** The parts that need no control plane, which is then not started. */
const IN_PROCESS_PARTS = ['codec', 'encode', 'crc'];
const PARTS = [...IN_PROCESS_PARTS, 'evacuation', 'gc', 'throughput', 'endpoint', 'cost', 'fold-reads', 'checkpoints', 'fencing', 'snapshots', 'groups', 'nbd', 'nbd-cost', 'backup', 'degraded'];
for (const name of only) if (!PARTS.includes(name)) throw new Error(`unknown bench part ${name}; the parts are ${PARTS.join(', ')}`);
const want = (name: string): boolean => only.size === 0 || only.has(name);

function section(title: string): void {
  console.log(`\n== ${title}`);
}

function table(rows: Array<Record<string, string | number>>): void {
  console.table(rows);
}

async function http(url: string, init: RequestInit = {}): Promise<Response> {
  const res = await fetch(url, init);
  if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${url}: ${res.status} ${await res.text()}`);
  return res;
}

async function createVolume(api: string, sizeBytes: number, extra: Record<string, unknown> = {}): Promise<string> {
  const res = await http(`${api}/volumes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ sizeBytes, ...extra }) });
  return ((await res.json()) as { volumeId: string }).volumeId;
}

/**
 * The data-path client: node:http with kept-alive connections, the same HTTP stack the AWS SDK
 * uses for the raw S3 baseline, so that both sides of a ratio pay the same client costs in this
 * one process (fetch costs several times more CPU per request body).
 */
const clientAgent = new HttpAgent({ keepAlive: true, maxSockets: 64 });

function rawHttp(url: string, method: string, body?: Buffer): Promise<Buffer> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: u.hostname, port: u.port, path: u.pathname + u.search, method, agent: clientAgent, headers: body ? { 'content-type': 'application/octet-stream', 'content-length': body.length } : {} },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const out = Buffer.concat(parts);
          if ((res.statusCode ?? 500) >= 300) reject(new Error(`${method} ${url}: ${res.statusCode} ${out.toString()}`));
          else resolve(out);
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

async function write(api: string, volumeId: string, offset: number, data: Buffer): Promise<void> {
  await rawHttp(`${api}/volumes/${volumeId}/data?offset=${offset}`, 'PUT', data);
}

async function read(api: string, volumeId: string, offset: number, length: number): Promise<Buffer> {
  return rawHttp(`${api}/volumes/${volumeId}/data?offset=${offset}&length=${length}`, 'GET');
}

/** CPU seconds used so far by this process and by the local endpoint's process (Linux /proc). */
function cpuSeconds(endpointPid: number | undefined): { node: number; endpoint: number } {
  const u = process.cpuUsage();
  let endpoint = NaN;
  if (endpointPid !== undefined) {
    try {
      // Fields 14 and 15 of /proc/<pid>/stat (utime, stime) in clock ticks, 100 per second here.
      const fields = readFileSync(`/proc/${endpointPid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      endpoint = (Number(fields[11]) + Number(fields[12])) / 100;
    } catch {
      // Not Linux, or the endpoint is not ours: reported as NaN.
    }
  }
  return { node: (u.user + u.system) / 1e6, endpoint };
}

let endpointPid: number | undefined;

/** CPU seconds of each process during the last `timed` run. */
let lastCpu = { node: 0, endpoint: 0 };

/**
 * Runs tasks 0..count-1 on `concurrency` workers; worker w runs tasks w, w + concurrency, ...
 * one after another, so that a task's `i % concurrency` names its worker (the throughput runs
 * give each worker its own volume: one writer per volume, as heads are). Returns elapsed seconds.
 */
async function timed(count: number, concurrency: number, task: (i: number) => Promise<void>): Promise<number> {
  const cpu0 = cpuSeconds(endpointPid);
  const start = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      for (let i = w; i < count; i += concurrency) await task(i);
    }),
  );
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu1 = cpuSeconds(endpointPid);
  lastCpu = { node: cpu1.node - cpu0.node, endpoint: cpu1.endpoint - cpu0.endpoint };
  return seconds;
}

interface CostRow {
  s3Puts: number;
  s3Gets: number;
  dynamoWriteUnits: number;
  dynamoReadUnits: number;
  dynamoRequests: number;
}

function costOf(c: RequestCounts, scale: number): CostRow & { dollars: number } {
  const s3Puts = (c.requests['S3:PutObject'] ?? 0) * scale;
  const s3Gets = (c.requests['S3:GetObject'] ?? 0) * scale;
  const dynamoRequests = Object.entries(c.requests).filter(([k]) => k.startsWith('DynamoDB:')).reduce((n, [, v]) => n + v, 0) * scale;
  const row = { s3Puts, s3Gets, dynamoWriteUnits: c.dynamoWriteUnits * scale, dynamoReadUnits: c.dynamoReadUnits * scale, dynamoRequests };
  const dollars =
    row.s3Puts * PRICE.s3PutPerRequest + row.s3Gets * PRICE.s3GetPerRequest + row.dynamoWriteUnits * PRICE.dynamoWritePerUnit + row.dynamoReadUnits * PRICE.dynamoReadPerUnit;
  return { ...row, dollars };
}

function fmtCost(label: string, c: CostRow & { dollars: number }): Record<string, string | number> {
  return {
    workload: label,
    'S3 PUT': Math.round(c.s3Puts),
    'S3 GET': Math.round(c.s3Gets),
    'DDB requests': Math.round(c.dynamoRequests),
    'DDB WCU': Math.round(c.dynamoWriteUnits),
    'DDB RCU': Math.round(c.dynamoReadUnits * 10) / 10,
    'USD (requests)': c.dollars.toFixed(4),
  };
}

async function main(): Promise<void> {
  console.log(`Sledge bench, ${new Date().toISOString()}, node ${process.version}, ${process.platform}/${process.arch}`);
  // Every process the bench starts (head, gateways, s3backer, the endpoint) inherits it (cli/huge-pages.ts).
  console.log(`GLIBC_TUNABLES=${process.env.GLIBC_TUNABLES ?? ''} (npm run bench sets glibc.malloc.hugetlb=1: buffers in transparent huge pages)`);

  let copy = NaN;
  if (want('codec') || want('encode')) {
    section('Erasure codec, GB/s of user data on one core (1 MiB shards), next to Buffer.copy');
    const codec = await benchCodec();
    copy = codec.find((r) => r.name.toLowerCase().includes('copy'))?.gbPerSec ?? NaN;
    table(codec.map((r) => ({ measurement: r.name, 'GB/s': r.gbPerSec.toFixed(2), 'x Buffer.copy': (r.gbPerSec / copy).toFixed(2) })));
  }

  if (want('encode')) {
    section('Segment encode (4 MiB payload, RS 4+2 per 64 KiB granule, CRC32C, trailers): the write path CPU');
    const payload = randomBytes(4 * MiB);
    const meta = { volumeId: 'vol-bench', seq: 1, prev: '', writer: { id: 'bench' }, k: 4, m: 2, blockSizeBytes: 4096, extents: [[0, 1024, 0]] as Array<[number, number, number]> };
    // Released after each, as the write path does once its PUTs settle (shared/data/buffer-pool.ts).
    (await encodeSegment({ ...meta, segmentId: newSegmentId(1) }, payload)).release();
    const n = 32;
    const start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) (await encodeSegment({ ...meta, segmentId: newSegmentId(1) }, payload)).release();
    const s = Number(process.hrtime.bigint() - start) / 1e9;
    table([{ measurement: 'encodeSegment 4 MiB', 'GB/s': ((n * 4 * MiB) / s / 1e9).toFixed(2), 'x Buffer.copy': ((n * 4 * MiB) / s / 1e9 / copy).toFixed(2) }]);
  }

  if (want('crc')) {
    section('CRC-32C, portable against native: CPU ms per 4 MiB write (this process, all threads; median of 5 rounds of 16)');
    table((await benchCrc()).map((r) => ({ CRC: r.crc, measurement: r.measurement, 'CPU ms per 4 MiB': r.cpuMsPer4MiB.toFixed(2) })));
  }

  if (!PARTS.some((p) => !IN_PROCESS_PARTS.includes(p) && want(p))) return;

  // Evacuations settle and re-check quickly here, so that what is timed is the moving.
  process.env.SLEDGE_EVACUATION_SETTLE_MS ??= '1000';
  process.env.SLEDGE_EVACUATION_RECHECK_SECONDS ??= '1';
  process.env.SLEDGE_GC_EVERY_COMMITS ??= '0';
  // Unsigned, as a stack deployed with apiIamAuthorization: false: the bench measures Sledge, and
  // its clients (node:http, nbd) send no signatures. Signing costs a SHA-256 of each body on each
  // side (docs/security.md).
  const plane = await startControlPlane({ port: 0, endpointPort: 0, preferExistingEndpoint: false, stackName: 'sledge-bench', apiAuth: 'none' });
  endpointPid = plane.endpointPid;
  try {
    const api = plane.apiUrl;
    const bucket = config().sledBuckets[0]!;

    // First, while the drives hold only what these sections write (whole-segment chunks).
    if (want('evacuation')) await benchEvacuation();
    if (want('gc')) await benchGc();

    if (want('throughput')) {
      section('Throughput through the local API against raw S3 on the same endpoint (same bytes, same concurrency)');
      const count = 32;
      const concurrency = 4;
      const data = randomBytes(4 * MiB);
      const vols = await Promise.all(Array.from({ length: concurrency }, () => createVolume(api, GiB)));
      // Warm up: connections, the drive registry, the volumes' first commits.
      await Promise.all(vols.map((v) => write(api, v, GiB - 4 * MiB, data)));
      // One writer per volume, as heads are: task i goes to volume i % concurrency.
      resetRequestCounts();
      const apiWrite = await timed(count, concurrency, (i) => write(api, vols[i % concurrency]!, Math.floor(i / concurrency) * 4 * MiB, data));
      const apiWriteCpu = lastCpu;
      const writeCounts = requestCounts();
      const rawPut = await timed(count, concurrency, (i) =>
        s3()
          .send(new PutObjectCommand({ Bucket: bucket, Key: `bench/raw-${i}`, Body: data, ContentLength: data.length }))
          .then(() => undefined),
      );
      const rawPutCpu = lastCpu;
      const apiRead = await timed(count, concurrency, (i) => read(api, vols[i % concurrency]!, Math.floor(i / concurrency) * 4 * MiB, 4 * MiB).then(() => undefined));
      const apiReadCpu = lastCpu;
      // The NBD gateway's direct reads (docs/nbd-gateway.md): the head answers a read plan and the
      // client GETs the data chunks itself. Node CPU here is the head's and the client's together.
      const unsigned = async (r: { headers?: Record<string, string> }) => r.headers ?? {};
      const planned = vols.map((v) => new VolumeClient(api, v, { sign: unsigned }));
      const directRead = await timed(count, concurrency, (i) => planned[i % concurrency]!.read(Math.floor(i / concurrency) * 4 * MiB, 4 * MiB).then(() => undefined));
      const directReadCpu = lastCpu;
      invariant(
        planned.every((c) => c.direct.fallbacks === 0 && c.sent.reads === 0),
        'a direct read fell back to an API read',
      );
      const rawGet = await timed(count, concurrency, async (i) => {
        const out = await s3().send(new GetObjectCommand({ Bucket: bucket, Key: `bench/raw-${i}` }));
        await out.Body!.transformToByteArray();
      });
      const rawGetCpu = lastCpu;
      // The floor the emulator sets: one stripe's k+m = 6 PUTs of 1 MiB (what a 4 MiB write
      // must send) against one 4 MiB PUT, with no encoding, no DynamoDB and no HTTP hop.
      const oneMiB = data.subarray(0, MiB);
      const stripePuts = await timed(count, concurrency, (i) =>
        Promise.all(
          config()
            .sledBuckets.slice(0, 6)
            .map((b, j) => s3().send(new PutObjectCommand({ Bucket: b, Key: `bench/stripe-${i}-${j}`, Body: oneMiB, ContentLength: MiB }))),
        ).then(() => undefined),
      );
      const stripeCpu = lastCpu;
      const mb = (count * 4 * MiB) / 1e6;
      const perOp = (seconds: number) => ((seconds * 1000) / count).toFixed(1);
      table([
        { path: 'write 4 MiB', 'API MB/s': (mb / apiWrite).toFixed(1), 'raw S3 MB/s': (mb / rawPut).toFixed(1), 'API / raw': (rawPut / apiWrite).toFixed(2), 'endpoint CPU ms/op (API, raw)': `${perOp(apiWriteCpu.endpoint)}, ${perOp(rawPutCpu.endpoint)}`, 'node CPU ms/op (API, raw)': `${perOp(apiWriteCpu.node)}, ${perOp(rawPutCpu.node)}` },
        { path: 'read 4 MiB', 'API MB/s': (mb / apiRead).toFixed(1), 'raw S3 MB/s': (mb / rawGet).toFixed(1), 'API / raw': (rawGet / apiRead).toFixed(2), 'endpoint CPU ms/op (API, raw)': `${perOp(apiReadCpu.endpoint)}, ${perOp(rawGetCpu.endpoint)}`, 'node CPU ms/op (API, raw)': `${perOp(apiReadCpu.node)}, ${perOp(rawGetCpu.node)}` },
        { path: 'read 4 MiB, plan + direct GETs', 'API MB/s': (mb / directRead).toFixed(1), 'raw S3 MB/s': (mb / rawGet).toFixed(1), 'API / raw': (rawGet / directRead).toFixed(2), 'endpoint CPU ms/op (API, raw)': `${perOp(directReadCpu.endpoint)}, ${perOp(rawGetCpu.endpoint)}`, 'node CPU ms/op (API, raw)': `${perOp(directReadCpu.node)}, ${perOp(rawGetCpu.node)}` },
        { path: 'ceiling: 6 x 1 MiB raw PUTs per 4 MiB', 'API MB/s': (mb / stripePuts).toFixed(1), 'raw S3 MB/s': (mb / rawPut).toFixed(1), 'API / raw': (rawPut / stripePuts).toFixed(2), 'endpoint CPU ms/op (API, raw)': `${perOp(stripeCpu.endpoint)}, ${perOp(rawPutCpu.endpoint)}`, 'node CPU ms/op (API, raw)': `${perOp(stripeCpu.node)}, ${perOp(rawPutCpu.node)}` },
      ]);
      console.log(
        `The endpoint (one Python process) spent ${perOp(apiWriteCpu.endpoint)} ms of CPU per API write against ${perOp(rawPutCpu.endpoint)} ms per raw PUT: ` +
          `while it is the bottleneck, the API can reach at most ${(rawPutCpu.endpoint / apiWriteCpu.endpoint).toFixed(2)}x raw, however little the head itself costs.`,
      );
      const apiTotal = apiWriteCpu.endpoint + apiWriteCpu.node;
      const rawTotal = rawPutCpu.endpoint + rawPutCpu.node;
      console.log(
        `CPU per 4 MiB written, endpoint and node together: API ${perOp(apiTotal)} ms, raw ${perOp(rawTotal)} ms. On ${availableParallelism()} cores the API cannot write faster than ` +
          `${((availableParallelism() * count * 4 * MiB) / apiTotal / 1e6).toFixed(0)} MB/s, ${((availableParallelism() * rawPut) / apiTotal).toFixed(2)}x the raw rate measured here.`,
      );
      console.log(`(${count} requests of 4 MiB, ${concurrency} at a time; the API stores (k+m)/k = 1.5x the bytes raw S3 stores)`);
      console.log('Mean latency per AWS request during the API writes:');
      table(
        Object.entries(writeCounts.requests).map(([op, n]) => ({ request: op, count: n, 'mean ms': ((writeCounts.millis[op] ?? 0) / n).toFixed(1) })),
      );
    }
    if (want('endpoint')) {
      section('What each request costs the local endpoint (CPU of its process, one request at a time)');
      const vol = await createVolume(api, GiB);
      await write(api, vol, 0, randomBytes(4 * MiB));
      const rows: Array<Record<string, string | number>> = [];
      const measure = async (label: string, n: number, task: (i: number) => Promise<unknown>) => {
        await timed(n, 1, async (i) => void (await task(i)));
        rows.push({ request: label, 'endpoint CPU ms': ((lastCpu.endpoint * 1000) / n).toFixed(2) });
      };
      const bodies = { '1 B': Buffer.alloc(1), '1 MiB': randomBytes(MiB), '4 MiB': randomBytes(4 * MiB) };
      for (const [label, body] of Object.entries(bodies)) {
        await measure(`S3 PutObject ${label}`, label === '4 MiB' ? 25 : 100, (i) => s3().send(new PutObjectCommand({ Bucket: bucket, Key: `bench/cost-${label}-${i}`, Body: body, ContentLength: body.length })));
      }
      await measure('DynamoDB GetItem (volume item)', 100, () => dynamo().send(new GetItemCommand({ TableName: config().volumesTable, Key: { volumeId: { S: vol } }, ConsistentRead: true })));
      await measure('DynamoDB BatchGetItem (4 page items)', 100, () =>
        dynamo().send(new BatchGetItemCommand({ RequestItems: { [config().pagesTable]: { Keys: [0, 1, 2, 3].map((p) => ({ volumeId: { S: vol }, page: { N: String(p) } })), ConsistentRead: true } } })),
      );
      table(rows);
      console.log('(a PUT costs the emulator a fixed part per request plus a part per MiB; a 4 MiB write through the API sends k+m = 6 PUTs of 1 MiB and three DynamoDB requests where the raw baseline sends one PUT)');
    }
    if (want('cost')) {
      section('Requests and cost (exact counts; DynamoDB units by published rules; list prices us-east-1)');
      // Both commit protocols in one run (docs/page-map.md, "Folding"): the default, and a volume made with foldTailMax 0.
      for (const [protocol, create] of [
        ['folding (the default, bound 256)', {}],
        ['not folding (foldTailMax 0)', { foldTailMax: 0 }],
      ] as const) {
        console.log(`Volume ${protocol}:`);
        const rows: Array<Record<string, string | number>> = [];
        const vol = await createVolume(api, GiB, create);
        const writes = 16; // 64 MiB, scaled to 1 GiB
        const data = randomBytes(4 * MiB);
        resetRequestCounts();
        for (let i = 0; i < writes; i++) await write(api, vol, i * 4 * MiB, data);
        const c = costOf(requestCounts(), GiB / (writes * 4 * MiB));
        rows.push(fmtCost('per GiB written in 4 MiB writes', c));
        const putsPerWrite = c.s3Puts / (GiB / (4 * MiB));
        console.log(`S3 PUTs per 4 MiB write: ${putsPerWrite} (k+m = 6; target at most ${(1.1 * 6).toFixed(1)})`);
        resetRequestCounts();
        for (let i = 0; i < writes; i++) await read(api, vol, i * 4 * MiB, 4 * MiB);
        rows.push(fmtCost('per GiB read in 4 MiB reads', costOf(requestCounts(), GiB / (writes * 4 * MiB))));
        const small = randomBytes(4096);
        resetRequestCounts();
        for (let i = 0; i < 1000; i++) await write(api, vol, Math.floor(Math.random() * (GiB / 4096)) * 4096, small);
        // The 1,000th commit of the volume queued its automatic checkpoint (every 1,000 commits by
        // default): let the worker finish it, so this row carries its amortized cost and the next
        // row none of it.
        await plane.idle();
        const writeCountsBefore = requestCounts();
        const tailOf = async () => {
          const v = (await pageMap().getVolume(vol))!;
          return v.foldedSeq === undefined ? 'not folding' : `tail ${v.headSeq - v.foldedSeq} commits`;
        };
        const readRandom = async (label: string) => {
          resetRequestCounts();
          const readStartMs = performance.now();
          for (let i = 0; i < 1000; i++) await read(api, vol, Math.floor(Math.random() * (GiB / 4096)) * 4096, 4096);
          const readMs = performance.now() - readStartMs;
          return { row: fmtCost(label, costOf(requestCounts(), 1)), msEach: readMs / 1000 };
        };
        // Reads while the tail is as the writes and the worker left it, then after it is folded.
        const tailBefore = await tailOf();
        const lagging = await readRandom(`per 1,000 random 4 KiB reads (${tailBefore})`);
        // On a folding volume, what is left of the tail is folded here, so the write row carries its folding work.
        resetRequestCounts();
        await foldVolume(vol);
        const foldCounts = requestCounts();
        const writeCounts = { ...writeCountsBefore };
        for (const [k, n] of Object.entries(foldCounts.requests)) writeCounts.requests[k] = (writeCounts.requests[k] ?? 0) + n;
        writeCounts.dynamoReadUnits += foldCounts.dynamoReadUnits;
        writeCounts.dynamoWriteUnits += foldCounts.dynamoWriteUnits;
        rows.push(fmtCost('per 1,000 random 4 KiB writes (and the checkpoint and folds they trigger)', costOf(writeCounts, 1)));
        rows.push(lagging.row);
        const folded = await readRandom(`per 1,000 random 4 KiB reads (${await tailOf()})`);
        rows.push(folded.row);
        table(rows);
        console.log(
          `4 KiB random reads, one at a time, 1,000 each: ${lagging.msEach.toFixed(2)} ms on average (${tailBefore}), then ${folded.msEach.toFixed(2)} ms (${await tailOf()})`,
        );
    
      }
    }

    if (want('fold-reads')) {
      section('4 KiB random reads: a folding volume (with a tail, then folded) against one that does not fold, interleaved');
      // Two 1 GiB volumes given the same writes; the reads alternate between them read by read, so
      // the machine's load weighs on both sides alike (the ratio is the figure, not the ms).
      const folding = await createVolume(api, GiB);
      const plain = await createVolume(api, GiB, { foldTailMax: 0 });
      const base = randomBytes(4 * MiB);
      for (let i = 0; i < 16; i++) for (const vol of [folding, plain]) await write(api, vol, i * 64 * MiB, base);
      const small = randomBytes(4096);
      for (let i = 0; i < 100; i++) {
        const offset = Math.floor(Math.random() * (GiB / 4096)) * 4096;
        for (const vol of [folding, plain]) await write(api, vol, offset, small);
      }
      const tailOf = async () => {
        const v = (await pageMap().getVolume(folding))!;
        return v.headSeq - v.foldedSeq!;
      };
      const rows: Array<Record<string, string | number>> = [];
      const compare = async (label: string) => {
        const ms = { folding: 0, plain: 0 };
        const counts = { folding: { dynamoReadUnits: 0, gets: 0 }, plain: { dynamoReadUnits: 0, gets: 0 } };
        const n = 1000;
        for (let i = 0; i < n; i++) {
          const offset = Math.floor(Math.random() * (GiB / 4096)) * 4096;
          const order = i % 2 === 0 ? (['folding', 'plain'] as const) : (['plain', 'folding'] as const);
          for (const side of order) {
            resetRequestCounts();
            const t = performance.now();
            await read(api, side === 'folding' ? folding : plain, offset, 4096);
            ms[side] += performance.now() - t;
            const c = requestCounts();
            counts[side].dynamoReadUnits += c.dynamoReadUnits;
            counts[side].gets += c.requests['S3:GetObject'] ?? 0;
          }
        }
        rows.push({
          reads: label,
          'folding ms': (ms.folding / n).toFixed(2),
          'not folding ms': (ms.plain / n).toFixed(2),
          'latency ratio': (ms.folding / ms.plain).toFixed(2),
          'folding RCU/read': (counts.folding.dynamoReadUnits / n).toFixed(2),
          'not folding RCU/read': (counts.plain.dynamoReadUnits / n).toFixed(2),
          'folding GETs/read': (counts.folding.gets / n).toFixed(2),
          'not folding GETs/read': (counts.plain.gets / n).toFixed(2),
        });
      };
      await plane.idle();
      const tail = await tailOf();
      await compare(`1,000 each, folding volume's tail ${tail} commits`);
      await foldVolume(folding);
      await compare(`1,000 each, folding volume's tail ${await tailOf()} commits`);
      table(rows);
      console.log('(the goal: at most 1.5x the latency and read units of a volume that does not fold)');
    }

    if (want('checkpoints')) {
      section('Checkpoints and rebuild against pages in the map and segments replayed (docs/checkpoints.md)');
      const { checkpoints, rebuilds } = await benchCheckpoints(api, { pageCounts: [256, 1024, 4096], replays: [0, 25, 100] });
      console.log('Checkpoint (read the previous checkpoint, replay the segments since, verify page by page against the live items, encode 4+2, upload, record, retention):');
      table(checkpoints);
      console.log('Rebuild after every page item was deleted (fence, read checkpoint, list sleds, read trailers, walk the chain, replay, write pages in transactions):');
      table(rebuilds);
    }

    if (want('fencing')) {
      section('The cost of fencing: one 4 KiB commit with and without the reservation condition');
      const plain = await createVolume(api, 64 * MiB);
      const fenced = await createVolume(api, 64 * MiB);
      for (const body of [
        { action: 'register', key: 'head:bench' },
        { action: 'reserve', key: 'head:bench', type: 'write-exclusive' },
      ]) {
        await http(`${api}/volumes/${fenced}/reservations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      }
      const block = randomBytes(4096);
      const commits = 50;
      const measure = async (volumeId: string, key?: string) => {
        // Counted from the second commit on: a head's first request to a volume also learns
        // its geometry (docs/page-map.md, step 1).
        for (let i = -1; i < commits; i++) {
          if (i === 0) resetRequestCounts();
          const res = await http(`${api}/volumes/${volumeId}/data?offset=${((i + 16) % 16) * 4096}`, {
            method: 'PUT',
            headers: { 'content-type': 'application/octet-stream', ...(key ? { 'x-sledge-reservation-key': key } : {}) },
            body: block as unknown as BodyInit,
          });
          await res.arrayBuffer();
        }
        return requestCounts();
      };
      const a = await measure(plain);
      const b = await measure(fenced, 'head:bench');
      // The volume item is billed by its whole size after the update: read it back to see it.
      const volItem = async (id: string) => {
        const out = await dynamo().send(new GetItemCommand({ TableName: config().volumesTable, Key: { volumeId: { S: id } }, ConsistentRead: true }));
        return itemSize(out.Item);
      };
      const row = (label: string, c: RequestCounts, volumeBytes: number) => ({
        commit: label,
        'TransactWriteItems per commit': (c.requests['DynamoDB:TransactWriteItems'] ?? 0) / commits,
        'DDB requests per commit': Object.entries(c.requests).filter(([k]) => k.startsWith('DynamoDB:')).reduce((n, [, v]) => n + v, 0) / commits,
        'DDB WCU per commit': (c.dynamoWriteUnits / commits).toFixed(2),
        'volume item bytes': volumeBytes,
        'volume item WCU in txn': 2 * Math.max(1, Math.ceil(volumeBytes / 1024)),
      });
      table([row('no reservation', a, await volItem(plain)), row('write-exclusive, key presented', b, await volItem(fenced))]);
    }

    if (want('snapshots')) await benchSnapshots({ apiUrl: api, idle: () => plane.idle(), table, section });
    if (want('groups')) await benchGroups({ idle: () => plane.idle(), table, section });

    if (want('degraded')) await benchDegraded({ table, section });

    if (want('backup')) await benchBackup({ apiUrl: api, table, section });

    if (want('nbd') || only.has('nbd-cost')) await benchNbd({
      compare: want('nbd'),
      apiUrl: api,
      endpointUrl: plane.endpointUrl,
      createBucket: async (name) => void (await s3().send(new CreateBucketCommand({ Bucket: name }))),
      createVolume,
      resetRequestCounts,
      requestCounts,
      costRow: (label, counts, scale) => fmtCost(label, costOf(counts, scale)),
      settle: async (volumeId) => {
        await plane.idle();
        await foldVolume(volumeId);
      },
      table,
      section,
    });
  } finally {
    await plane.stop();
  }
}

/**
 * An extra worker in this process, next to the control plane's own poller: it receives from
 * the evacuation queue and runs the same handler, as a second Lambda instance would.
 */
function extraWorker(): { stop: () => Promise<void> } {
  let stopping = false;
  const loop = (async () => {
    while (!stopping) {
      const out = await sqs().send(new ReceiveMessageCommand({ QueueUrl: config().evacuationQueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageSystemAttributeNames: ['All'] }));
      const messages = out.Messages ?? [];
      if (messages.length === 0) continue;
      const res = await handleWorkEvent({ Records: messages.map((m) => toSqsRecord(m, '', 'us-east-1')) });
      const failed = new Set(res.batchItemFailures.map((f) => f.itemIdentifier));
      const done = messages.filter((m) => !failed.has(m.MessageId!));
      if (done.length > 0) await sqs().send(new DeleteMessageBatchCommand({ QueueUrl: config().evacuationQueueUrl, Entries: done.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle! })) }));
    }
  })();
  return {
    stop: async () => {
      stopping = true;
      await loop;
    },
  };
}

async function benchEvacuation(): Promise<void> {
  section('Evacuation: one drive emptied by one worker, then another by two (moves only; settling excluded)');
  // Eight drives take every write (one per sled), so each holds an eighth of the stored bytes.
  const drives = await listDrives();
  const chosen = new Set(drives.filter((d) => d.drive === 'd00').map((d) => d.driveId));
  for (const d of drives) if (!chosen.has(d.driveId)) await updateDrive(d.driveId, { state: 'spare' });
  forgetDriveStates();
  const v = await createVolumeInProcess({ sizeBytes: 256 * MiB });
  // 128 MiB in 256 KiB writes: 512 segments of 64 KiB chunks, so each of the eight drives holds
  // about 380 chunks, some 24 move batches: enough for two workers to share.
  const totalBytes = 128 * MiB;
  const writeBytes = 256 * 1024;
  for (let off = 0; off < totalBytes; off += 4 * writeBytes) {
    await Promise.all([0, 1, 2, 3].map((j) => writePieces(v.volumeId, [{ offset: off + j * writeBytes, length: writeBytes, data: randomBytes(writeBytes) }])));
  }
  // The others come back as targets.
  for (const d of drives) if (!chosen.has(d.driveId)) await reactivateDrive(d.driveId);
  const perDrive = new Map<string, number>();
  for await (const c of listVolumeChunks(v.volumeId, config().sledBuckets)) perDrive.set(`${c.bucket}/${c.key.split('/')[0]}`, (perDrive.get(`${c.bucket}/${c.key.split('/')[0]}`) ?? 0) + 1);
  const victims = [...chosen].sort((a, b) => (perDrive.get(b) ?? 0) - (perDrive.get(a) ?? 0)).slice(0, 2);
  const rows: Array<Record<string, string | number>> = [];
  for (const [i, id] of victims.entries()) {
    const workers = i + 1;
    const extra = workers === 2 ? extraWorker() : null;
    resetRequestCounts();
    await retireDrive(id, `bench, ${workers} worker(s)`);
    let d = await getDrive(id);
    for (let t = 0; t < 1200 && d?.state !== 'retired'; t++) {
      await new Promise((r) => setTimeout(r, 250));
      d = await getDrive(id);
    }
    await extra?.stop();
    const e = d!.evacuation!;
    const seconds = Math.max(0.001, (e.lastProgressAtMs - e.startedAtMs) / 1000);
    const c = requestCounts();
    rows.push({
      workers,
      state: d!.state,
      'chunks moved': e.chunksMoved,
      'MiB moved': (e.bytesMoved / MiB).toFixed(1),
      seconds: seconds.toFixed(2),
      'MB/s': (e.bytesMoved / seconds / 1e6).toFixed(1),
      'chunks/s': (e.chunksMoved / seconds).toFixed(1),
      'requests per chunk (this process)': (Object.values(c.requests).reduce((n, x) => n + x, 0) / Math.max(1, e.chunksMoved)).toFixed(1),
    });
  }
  table(rows);
  console.log('(a move is a GET, a PUT, a transaction, a delete and a record read; on one local endpoint process the endpoint, not the workers, is the ceiling)');
  for (const id of victims) await reactivateDrive(id);
}

async function benchGc(): Promise<void> {
  section('GC: an overwrite-heavy volume collected to its space target; bytes reclaimed per request');
  const v = await createVolumeInProcess({ sizeBytes: 16 * MiB });
  // Every MiB written three times in 256 KiB pieces, then 200 scattered 4-32 KiB overwrites.
  for (let round = 0; round < 3; round++) {
    for (let off = 0; off < 16 * MiB; off += 256 * 1024) await writePieces(v.volumeId, [{ offset: off, length: 256 * 1024, data: randomBytes(256 * 1024) }]);
  }
  for (let i = 0; i < 200; i++) {
    const length = 4096 * (1 + Math.floor(Math.random() * 8));
    const offset = 4096 * Math.floor(Math.random() * ((16 * MiB - length) / 4096));
    await writePieces(v.volumeId, [{ offset, length, data: randomBytes(length) }]);
  }
  resetRequestCounts();
  const start = performance.now();
  let reclaimed = 0;
  let rewritten = 0;
  let passes = 0;
  let first: Awaited<ReturnType<typeof collectVolume>> | undefined;
  let last: Awaited<ReturnType<typeof collectVolume>> | undefined;
  for (; passes < 20; passes++) {
    last = await collectVolume(v.volumeId, { queueContinuation: false });
    first ??= last;
    reclaimed += last.bytesReclaimed;
    rewritten += last.compactionBytesRewritten;
    if (!last.continued) break;
  }
  const seconds = (performance.now() - start) / 1000;
  const c = requestCounts();
  let storedAfter = 0;
  for await (const chunk of listVolumeChunks(v.volumeId, config().sledBuckets)) storedAfter += chunk.sizeBytes;
  const requests = Object.values(c.requests).reduce((n, x) => n + x, 0);
  const s3Requests = Object.entries(c.requests).filter(([k]) => k.startsWith('S3:')).reduce((n, [, x]) => n + x, 0);
  table([
    {
      passes: passes + 1,
      'stored MiB before': (first!.storedBytesBefore / MiB).toFixed(1),
      'stored MiB after': (storedAfter / MiB).toFixed(1),
      'live MiB': (last!.liveBytes / MiB).toFixed(1),
      'MiB reclaimed': (reclaimed / MiB).toFixed(1),
      requests,
      'S3 requests': s3Requests,
      'KiB reclaimed per request': (reclaimed / 1024 / requests).toFixed(1),
      'MiB rewritten by compaction': (rewritten / MiB).toFixed(1),
      seconds: seconds.toFixed(1),
    },
  ]);
}

// A bench that stops because nothing is left to wait for, before it printed everything, says so.
let finished = false;
process.on('beforeExit', () => {
  if (!finished) console.error('bench: the event loop emptied before the bench finished; still open:', process.getActiveResourcesInfo());
});
await main();
finished = true;
