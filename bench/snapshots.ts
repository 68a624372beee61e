/**
 * Snapshots, clones and changed blocks (docs/snapshots.md), through the local API: what they
 * cost in time and DynamoDB requests on a 1 GiB and a 1 TiB volume holding the same sparse
 * data. The goal is that snapshot, clone and changed-block costs do not grow with the size.
 *
 * For each size: 256 pages of 1 MiB written (every fourth page from the start, the same bytes
 * for both sizes), then
 *   - 4 KiB overwrites of 32 written pages, twice each, before any snapshot (the baseline);
 *   - snapshots and clones, each timed and counted on its own;
 *   - 4 KiB overwrites of 32 other written pages, twice each, after the snapshot: the first
 *     write to a page after a snapshot saves the page's frozen copy, later ones do not;
 *   - a base snapshot, 1% of the written pages changed, a snapshot, 10% changed, a snapshot;
 *     the changed-block lists between them (and without base) are timed, counted and checked
 *     against the pages that were changed.
 *
 * Then flatten: a clone of a snapshot of a volume with FLATTEN_MIB MiB written is flattened
 * (POST /volumes/{id}/flatten, timed until GET /volumes/{id} shows no parent), against a raw
 * copy of the same bytes through the same API on the same endpoint: GET /volumes/{parent}/data
 * 4 MiB at a time, each PUT to a fresh volume, one after the other.
 *
 * DynamoDB units are computed from item sizes by the published rules (shared/aws/capacity.ts):
 * the local endpoint reports no real consumed capacity. Requests are counted exactly by the
 * SDK middleware (shared/aws/clients.ts); the API runs in this process, so every request it
 * makes is counted. Background work is let finish before each measurement.
 */
import { randomBytes } from 'node:crypto';
import { requestCounts, resetRequestCounts, type RequestCounts } from '#shared/aws/clients.ts';
import { writePieces } from '#shared/data/write.ts';
import { pageMap } from '#shared/ports.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const BLOCK = 4096;

/** Written pages per volume, and the stride between them (in 1 MiB pages). */
const WRITTEN_PAGES = 256;
const STRIDE = 4;
/** Pages overwritten (4 KiB each) for the write-cost rows. */
const OVERWRITES = 32;
/** Snapshots and clones timed per size (the median is reported). */
const REPEATS = 5;
/** MiB written to the parent of the clone that is flattened. */
const FLATTEN_MIB = 64;

export interface SnapshotBenchContext {
  apiUrl: string;
  /** Waits until the control plane's workers have nothing left to do. */
  idle(): Promise<void>;
  table(rows: Array<Record<string, string | number>>): void;
  section(title: string): void;
}

async function call(url: string, method: string, body?: unknown): Promise<any> {
  const res = await fetch(url, { method, ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${text}`);
  return JSON.parse(text);
}

async function put(api: string, volumeId: string, offset: number, data: Buffer): Promise<void> {
  const res = await fetch(`${api}/volumes/${volumeId}/data?offset=${offset}`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: new Uint8Array(data) });
  if (!res.ok) throw new Error(`write ${volumeId} @${offset}: ${res.status} ${await res.text()}`);
  await res.arrayBuffer();
}

interface Dynamo {
  requests: number;
  byOp: string;
  rcu: number;
  wcu: number;
}

function dynamoOf(c: RequestCounts): Dynamo {
  const ops = Object.entries(c.requests)
    .filter(([k]) => k.startsWith('DynamoDB:'))
    .sort(([a], [b]) => a.localeCompare(b));
  return {
    requests: ops.reduce((n, [, v]) => n + v, 0),
    byOp: ops.map(([k, v]) => `${k.slice('DynamoDB:'.length)} ${v}`).join(', '),
    rcu: c.dynamoReadUnits,
    wcu: c.dynamoWriteUnits,
  };
}

/** Runs `task` once with the counters reset first; returns its milliseconds and counts. */
async function measured<T>(ctx: SnapshotBenchContext, task: () => Promise<T>): Promise<{ ms: number; dynamo: Dynamo; counts: RequestCounts; out: T }> {
  await ctx.idle();
  resetRequestCounts();
  const t0 = performance.now();
  const out = await task();
  const ms = performance.now() - t0;
  const counts = requestCounts();
  return { ms, dynamo: dynamoOf(counts), counts, out };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const label = (size: number) => (size >= TiB ? `${size / TiB} TiB` : `${size / GiB} GiB`);

/** The written pages, in order: 0, 4, 8, ... */
const writtenPage = (i: number) => i * STRIDE;

/** Every changed-block extent between two snapshots (all pages of the answer). */
async function changedBlocks(api: string, snapshotId: string, base?: string): Promise<Array<{ offset: number; length: number }>> {
  const out: Array<{ offset: number; length: number }> = [];
  let next: string | undefined;
  do {
    const q = new URLSearchParams({ limit: '10000', ...(base ? { base } : {}), ...(next ? { next } : {}) });
    const r = await call(`${api}/snapshots/${snapshotId}/changed-blocks?${q}`, 'GET');
    for (const e of r.extents) {
      const last = out[out.length - 1];
      if (last && last.offset + last.length === e.offset) last.length += e.length;
      else out.push(e);
    }
    next = r.next;
  } while (next);
  return out;
}

export async function benchSnapshots(ctx: SnapshotBenchContext): Promise<void> {
  const api = ctx.apiUrl;
  const sizes = [GiB, TiB];
  // The same bytes on both volumes.
  const pageData = Array.from({ length: WRITTEN_PAGES / 4 }, () => randomBytes(4 * MiB));
  const small = randomBytes(BLOCK);
  const change = randomBytes(64 * KiB);

  const costRows: Array<Record<string, string | number>> = [];
  const writeRows: Array<Record<string, string | number>> = [];
  const listRows: Array<Record<string, string | number>> = [];
  const setupSeconds: string[] = [];

  for (const size of sizes) {
    const t0 = performance.now();
    // Automatic checkpoints off, so that none lands in a measurement.
    const vol = await call(`${api}/volumes`, 'POST', { sizeBytes: size, checkpointEveryCommits: 0 });
    const id = vol.volumeId as string;
    // Populate in-process (it is not measured): four written pages per commit.
    for (let i = 0; i < WRITTEN_PAGES; i += 4) {
      const data = pageData[i / 4]!;
      await writePieces(
        id,
        [0, 1, 2, 3].map((j) => ({ offset: writtenPage(i + j) * MiB, length: MiB, data: data.subarray(j * MiB, (j + 1) * MiB) })),
      );
    }
    setupSeconds.push(`${label(size)} ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    // Write cost before any snapshot: pages 0..31 of the written ones, twice (the second write rewrites the same block).
    const overwrite = async (first: number) => {
      for (let i = first; i < first + OVERWRITES; i++) await put(api, id, writtenPage(i) * MiB + 8 * BLOCK, small);
    };
    const before1 = await measured(ctx, () => overwrite(0));
    const before2 = await measured(ctx, () => overwrite(0));

    // Snapshots, one at a time.
    const snaps: Array<Awaited<ReturnType<typeof measured<any>>>> = [];
    for (let r = 0; r < REPEATS; r++) snaps.push(await measured(ctx, () => call(`${api}/volumes/${id}/snapshots`, 'POST', { name: `bench ${r}` })));
    const snapshotId = snaps[0]!.out.snapshotId as string;
    const clones: Array<Awaited<ReturnType<typeof measured<any>>>> = [];
    for (let r = 0; r < REPEATS; r++) clones.push(await measured(ctx, () => call(`${api}/volumes`, 'POST', { sourceSnapshotId: snapshotId, checkpointEveryCommits: 0 })));
    // A clone reads as its snapshot: checked on one written page.
    const clonePage = Buffer.from(await (await fetch(`${api}/volumes/${clones[0]!.out.volumeId}/data?offset=${writtenPage(100) * MiB}&length=${MiB}`)).arrayBuffer());
    if (!clonePage.equals(pageData[25]!.subarray(0, MiB))) throw new Error('the clone does not read as its snapshot');
    for (const [what, runs] of [
      ['snapshot', snaps],
      ['clone', clones],
    ] as const) {
      const d = runs.map((r) => r.dynamo);
      costRows.push({
        volume: label(size),
        operation: what,
        'median ms': median(runs.map((r) => r.ms)).toFixed(1),
        'DDB requests (each)': [...new Set(d.map((x) => x.requests))].join('/'),
        'DDB requests (first)': d[0]!.byOp,
        'RCU (first)': d[0]!.rcu,
        'WCU (first)': d[0]!.wcu,
      });
    }

    // Write cost after the snapshot: pages 32..63 of the written ones, twice. The frozen copies
    // are counted between the runs (outside them): a copy put that finds one already there is refused.
    const frozen = async () => {
      let n = 0;
      for await (const _ of pageMap().listFrozenPages(id, vol.pageBlocks, 0)) n++;
      return n;
    };
    const frozen0 = await frozen();
    const after1 = await measured(ctx, () => overwrite(OVERWRITES));
    const frozen1 = await frozen();
    const after2 = await measured(ctx, () => overwrite(OVERWRITES));
    const frozen2 = await frozen();
    const perWrite = (m: { dynamo: Dynamo; counts: RequestCounts }, stored: number) => {
      const puts = m.counts.requests['DynamoDB:PutItem'] ?? 0;
      return { wcu: m.dynamo.wcu / OVERWRITES, requests: m.dynamo.requests / OVERWRITES, puts: puts / OVERWRITES, stored: stored / OVERWRITES, refused: (puts - stored) / OVERWRITES };
    };
    const b1 = perWrite(before1, 0);
    const b2 = perWrite(before2, 0);
    const a1 = perWrite(after1, frozen1 - frozen0);
    const a2 = perWrite(after2, frozen2 - frozen1);
    if (b1.puts !== 0 || b2.puts !== 0 || a1.stored !== 1 || a2.stored !== 0) throw new Error(`unexpected frozen copies on ${label(size)}: ${JSON.stringify({ b1, b2, a1, a2 })}`);
    // What one stored copy was billed, from the first writes after the snapshot (units per copy).
    const unitsPerCopy = a1.wcu - b1.wcu;
    for (const [which, before, after] of [
      ['first write to the page after a snapshot', b1, a1],
      ['later writes to the page', b2, a2],
    ] as const) {
      writeRows.push({
        volume: label(size),
        '4 KiB write': which,
        'WCU, no snapshot': before.wcu.toFixed(2),
        'WCU, snapshot': after.wcu.toFixed(2),
        'extra WCU': (after.wcu - before.wcu).toFixed(2),
        'extra WCU, refused puts billed': (after.wcu - before.wcu + after.refused * unitsPerCopy).toFixed(2),
        'DDB requests (no snapshot, snapshot)': `${before.requests.toFixed(2)}, ${after.requests.toFixed(2)}`,
        'copy PutItems: stored, refused': `${after.stored.toFixed(2)}, ${after.refused.toFixed(2)}`,
      });
    }

    // Changed blocks: a base, 1% of the written pages changed, 10% changed.
    const base = await call(`${api}/volumes/${id}/snapshots`, 'POST', { name: 'base' });
    const onePct = Math.round(WRITTEN_PAGES / 100);
    const tenPct = Math.round(WRITTEN_PAGES / 10);
    // Distinct written pages, spread over the written range, none of those overwritten above.
    const changedPages = (count: number, from: number) => Array.from({ length: count }, (_, k) => writtenPage(from + k * 2));
    const first = changedPages(onePct, 2 * OVERWRITES);
    const second = changedPages(tenPct, 2 * OVERWRITES + 2 * onePct);
    for (const p of first) await put(api, id, p * MiB, change);
    const s1 = await call(`${api}/volumes/${id}/snapshots`, 'POST', { name: '1%' });
    for (const p of second) await put(api, id, p * MiB, change);
    const s2 = await call(`${api}/volumes/${id}/snapshots`, 'POST', { name: '10%' });
    for (const [what, snap, b, pages] of [
      [`1% (${onePct} pages)`, s1.snapshotId, base.snapshotId, first],
      [`10% (${tenPct} pages)`, s2.snapshotId, s1.snapshotId, second],
      [`every written block, no base (${WRITTEN_PAGES} pages)`, s2.snapshotId, undefined, null],
    ] as const) {
      const m = await measured(ctx, () => changedBlocks(api, snap, b));
      if (pages !== null) {
        const expected = pages.map((p) => ({ offset: p * MiB, length: change.length }));
        if (JSON.stringify(m.out) !== JSON.stringify(expected)) throw new Error(`changed blocks ${what} on ${label(size)}: ${JSON.stringify(m.out)}, expected ${JSON.stringify(expected)}`);
      } else if (m.out.length !== WRITTEN_PAGES || m.out.some((e, i) => e.offset !== writtenPage(i) * MiB || e.length !== MiB)) {
        throw new Error(`changed blocks without base on ${label(size)}: ${m.out.length} extents, expected the ${WRITTEN_PAGES} written pages`);
      }
      listRows.push({
        volume: label(size),
        changed: what,
        extents: m.out.length,
        ms: m.ms.toFixed(1),
        'DDB requests': m.dynamo.byOp,
        RCU: m.dynamo.rcu,
      });
    }
  }

  ctx.section(`Snapshots and clones: a 1 GiB and a 1 TiB volume, each with the same ${WRITTEN_PAGES} written 1 MiB pages (docs/snapshots.md)`);
  console.log(`(setup, not measured: ${setupSeconds.join(', ')}; each operation alone, ${REPEATS} times, with the counters reset before each; "first" is the first one on the volume)`);
  ctx.table(costRows);
  console.log(
    `4 KiB writes to ${OVERWRITES} written pages, per write, with no snapshot and after one. WCU are computed from item sizes by DynamoDB's rules for the requests ` +
      'that succeeded (the local endpoint reports no consumed capacity). Every commit after a snapshot sends the frozen-copy PutItem for each page it changes; ' +
      'after the first it is refused by its condition, which DynamoDB bills too, by the item it found (at least 1 WCU): the column "refused puts billed" adds those.',
  );
  ctx.table(writeRows);
  console.log('Changed-block lists (every page of the answer, limit 10000), checked against the pages written:');
  ctx.table(listRows);

  await benchFlatten(ctx);
}

/** Flatten MB/s of a clone of a snapshot with FLATTEN_MIB MiB written, against a raw copy of the same bytes through the API. */
async function benchFlatten(ctx: SnapshotBenchContext): Promise<void> {
  const api = ctx.apiUrl;
  const bytes = FLATTEN_MIB * MiB;
  const step = 4 * MiB;
  const vol = await call(`${api}/volumes`, 'POST', { sizeBytes: bytes, checkpointEveryCommits: 0 });
  const data = randomBytes(bytes);
  for (let off = 0; off < bytes; off += step) await writePieces(vol.volumeId, [{ offset: off, length: step, data: data.subarray(off, off + step) }]);
  const snap = await call(`${api}/volumes/${vol.volumeId}/snapshots`, 'POST', {});
  const clone = await call(`${api}/volumes`, 'POST', { sourceSnapshotId: snap.snapshotId, checkpointEveryCommits: 0 });
  const readAll = async (volumeId: string) => {
    const parts: Buffer[] = [];
    for (let off = 0; off < bytes; off += step) {
      const res = await fetch(`${api}/volumes/${volumeId}/data?offset=${off}&length=${step}`);
      if (!res.ok) throw new Error(`read ${volumeId} @${off}: ${res.status} ${await res.text()}`);
      parts.push(Buffer.from(await res.arrayBuffer()));
    }
    return Buffer.concat(parts);
  };

  // Flatten: from the POST to the first GET that shows no parent (polled every 20 ms).
  let progressSeen = 0;
  let polls = 0;
  const flat = await measured(ctx, async () => {
    await call(`${api}/volumes/${clone.volumeId}/flatten`, 'POST');
    for (;;) {
      const v = await call(`${api}/volumes/${clone.volumeId}`, 'GET');
      polls++;
      if (!v.parent) return;
      if (v.flatten) progressSeen++;
      await new Promise((r) => setTimeout(r, 20));
    }
  });
  if (!(await readAll(clone.volumeId)).equals(data)) throw new Error('the flattened clone does not read as its snapshot');
  if ((await call(`${api}/snapshots/${snap.snapshotId}`, 'GET')).dependants.length !== 0) throw new Error('the flattened clone is still a dependant');

  // Raw copy of the same bytes through the API: read the parent, write a fresh volume.
  const target = await call(`${api}/volumes`, 'POST', { sizeBytes: bytes, checkpointEveryCommits: 0 });
  const copy = await measured(ctx, async () => {
    for (let off = 0; off < bytes; off += step) {
      const res = await fetch(`${api}/volumes/${vol.volumeId}/data?offset=${off}&length=${step}`);
      if (!res.ok) throw new Error(`read @${off}: ${res.status}`);
      await put(api, target.volumeId, off, Buffer.from(await res.arrayBuffer()));
    }
  });
  if (!(await readAll(target.volumeId)).equals(data)) throw new Error('the raw copy does not read as the parent');

  const mbs = (ms: number) => bytes / 1e6 / (ms / 1000);
  const row = (what: string, m: { ms: number; dynamo: Dynamo; counts: RequestCounts }) => ({
    copy: what,
    seconds: (m.ms / 1000).toFixed(2),
    'MB/s': mbs(m.ms).toFixed(1),
    'S3 PUT': m.counts.requests['S3:PutObject'] ?? 0,
    'S3 GET': m.counts.requests['S3:GetObject'] ?? 0,
    'DDB requests': m.dynamo.requests,
    WCU: m.dynamo.wcu,
    'SQS send': m.counts.requests['SQS:SendMessage'] ?? 0,
  });
  ctx.section(`Flatten: a clone of a snapshot of a volume with ${FLATTEN_MIB} MiB written, against a raw copy of the same bytes through the API`);
  console.log(
    'flatten: POST /volumes/{clone}/flatten, then GET /volumes/{clone} every 20 ms until it has no parent (the SQS worker copies 16 pages per message, one commit per 1 MiB page). ' +
      'raw copy: GET /volumes/{parent}/data 4 MiB, PUT it to a fresh volume, one after the other. Same endpoint, same run; both results read back and compared with the bytes written. ' +
      `The flatten row's requests include the ${polls} polls (one GetItem each); progress was shown in ${progressSeen} of them.`,
  );
  ctx.table([row('flatten', flat), row('raw copy through the API (GET + PUT, 4 MiB each)', copy)]);
  console.log(`flatten / raw copy: ${(mbs(flat.ms) / mbs(copy.ms)).toFixed(2)} x the raw copy's MB/s`);
}
