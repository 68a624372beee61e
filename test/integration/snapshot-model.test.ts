import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { collectVolume } from '#shared/maintenance/gc.ts';
import { purgeSnapshots } from '#shared/control/snapshots.ts';
import { flattenStep } from '#shared/maintenance/flatten.ts';
import { foldVolume } from '#shared/maintenance/fold.ts';
import { isFolding } from '#shared/data/tail.ts';
import { listDrives, reactivateDrive } from '#shared/maintenance/drives.ts';
import { BatchWriteItemCommand, QueryCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
import { dynamo } from '#shared/aws/clients.ts';
import { config } from '#shared/core/config.ts';
import { pageMap } from '#shared/ports.ts';
import { seeded } from '../unit/seed.ts';
import { http, testApi } from './helpers.ts';

/**
 * The invariant "a snapshot never changes; a clone reads as its snapshot until written",
 * checked against a model (docs/snapshots.md). Random writes, trims, snapshots, clones, clone
 * writes, rollbacks, flattens, snapshot and clone deletes, GC passes, a checkpoint + rebuild and a drive
 * evacuation. After every step the volumes and snapshots it touched (for a snapshot delete:
 * every snapshot of that volume, whose frozen pages it moves), and every tenth step one other
 * volume or snapshot (at random, in turn), are read whole and compared with the model; after every GC pass, the
 * rebuild, the evacuation, every 250 steps and at the end, all of them are. Changed-block lists are compared with the model's written-or-trimmed sets.
 * The seed is printed; replay with SLEDGE_SEED=<seed>. SLEDGE_SNAPSHOT_MODEL_OPS sets the
 * number of steps (default 1000).
 */
const OPS = Number(process.env.SLEDGE_SNAPSHOT_MODEL_OPS ?? 1000);
const BLOCK = 4096;
const SIZE = 1536 * 1024; // two pages of 1 MiB, the second half used
const BLOCKS = SIZE / BLOCK;
const MAX_VOLUMES = 5;
const MAX_SNAPSHOTS = 8;

/** A block's state: never written (0), trimmed (-1), or the id of the write that wrote it. */
type BlockState = Int32Array;

interface ModelVolume {
  volumeId: string;
  bytes: Buffer;
  state: BlockState;
  /** Blocks this volume wrote or trimmed itself (a clone's others read through to its parent). */
  own: Uint8Array;
  parent?: string;
  snapshots: Set<string>;
}
interface ModelSnapshot {
  snapshotId: string;
  volumeId: string;
  seq: number;
  bytes: Buffer;
  state: BlockState;
  own: Uint8Array;
  /** The snapshot its volume read through to when it was taken (it depends on it). */
  parentSnap?: string;
  /** Snapshots that may be its base: of its volume up to its seq, then of each ancestor up to the clone point. */
  chain: Array<{ volumeId: string; maxSeq: number }>;
  dependants: Set<string>;
}

const { api, apiUrl: url } = testApi({ sledgeEnv: true });

// The drive the test retires goes back into service for the files after this one, pass or fail.
afterAll(async () => {
  for (const d of await listDrives()) if (d.state !== 'active') await reactivateDrive(d.driveId);
});

const post = (path: string, body: unknown) => http(`${url}${path}`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

function changedFromModel(a: BlockState | null, b: BlockState): Array<{ offset: number; length: number }> {
  const out: Array<{ offset: number; length: number }> = [];
  for (let i = 0; i < b.length; i++) {
    if ((a ? a[i] : 0) === b[i]) continue;
    const last = out[out.length - 1];
    if (last && last.offset + last.length === i * BLOCK) last.length += BLOCK;
    else out.push({ offset: i * BLOCK, length: BLOCK });
  }
  return out;
}

describe('snapshots and clones against a model', () => {
  it(`never change a snapshot, and clones read as their snapshot until written, over ${OPS} steps`, async () => {
    const rng = seeded('snapshot model');
    const volumes = new Map<string, ModelVolume>();
    const snapshots = new Map<string, ModelSnapshot>();
    const counts: Record<string, number> = {};
    const count = (k: string, detail = '') => {
      counts[k] = (counts[k] ?? 0) + 1;
      if (process.env.SLEDGE_MODEL_TRACE) console.log(`step: ${k} ${detail}`);
    };
    let writeId = 0;
    const pick = <T>(xs: T[]): T => xs[rng.int(xs.length)]!;
    const base = await api.createVolume({ sizeBytes: SIZE, checkpointEveryCommits: 0 });
    volumes.set(base.volumeId, {
      volumeId: base.volumeId,
      bytes: Buffer.alloc(SIZE),
      state: new Int32Array(BLOCKS),
      own: new Uint8Array(BLOCKS),
      snapshots: new Set(),
    });

    const verifyVolume = async (v: ModelVolume, context: string) => {
      const got = await api.read(v.volumeId, 0, SIZE);
      if (!got.equals(v.bytes)) expect.fail(`${context}: volume ${v.volumeId} differs from the model`);
    };
    const verifySnapshot = async (s: ModelSnapshot, context: string) => {
      const r = await http(`${url}/snapshots/${s.snapshotId}/data?offset=0&length=${SIZE}`);
      expect(r.status, `${context}: ${r.body.toString()}`).toBe(200);
      if (!r.body.equals(s.bytes)) expect.fail(`${context}: snapshot ${s.snapshotId} changed (it must never change)`);
    };
    const verifyAll = async (context: string) => {
      for (const v of volumes.values()) await verifyVolume(v, context);
      for (const s of snapshots.values()) await verifySnapshot(s, context);
    };
    /** What the step touched (volume and snapshot ids), and whether it could move or delete data. */
    const touched = new Set<string>();
    let structural = false;

    let evacuated = false;
    let rebuilt = false;
    let stepStarted = performance.now();
    let lastKind = '';
    /** The model's side of a snapshot deleted (202): its frozen pages move to the next older snapshot of the volume. */
    const deleted = async (s: ModelSnapshot) => {
      snapshots.delete(s.snapshotId);
      volumes.get(s.volumeId)?.snapshots.delete(s.snapshotId);
      if (s.parentSnap) snapshots.get(s.parentSnap)?.dependants.delete(s.snapshotId);
      if (rng.next() < 0.5) await purgeSnapshots(s.volumeId).catch(() => undefined); // else the queue's worker does it
      for (const x of snapshots.values()) if (x.volumeId === s.volumeId) touched.add(x.snapshotId);
      touched.add(s.volumeId);
      count('snapshot delete', s.snapshotId);
    };
    /** Deletes snapshot `s`, which nothing depends on. */
    const deleteSnapshot = async (s: ModelSnapshot, context: string) => {
      const res = await http(`${url}/snapshots/${s.snapshotId}`, { method: 'DELETE' });
      expect(res.status, `${context}: ${res.body.toString()}`).toBe(202);
      await deleted(s);
    };
    for (let op = 0; op < OPS; op++) {
      const elapsed = performance.now() - stepStarted;
      if (process.env.SLEDGE_MODEL_TRACE && elapsed > 1000) console.log(`slow step ${op - 1} (${lastKind}): ${Math.round(elapsed)} ms`);
      stepStarted = performance.now();
      lastKind = JSON.stringify(counts);
      const context = `step ${op} (seed ${rng.seed})`;
      touched.clear();
      structural = op % 250 === 249;
      const r = rng.next();
      const vols = [...volumes.values()];
      const snaps = [...snapshots.values()];
      if (r < 0.4) {
        const v = pick(vols);
        const n = rng.next() < 0.8 ? 1 + rng.int(8) : 1 + rng.int(200);
        const at = rng.int(BLOCKS - n + 1);
        const data = randomBytes(n * BLOCK);
        await api.write(v.volumeId, at * BLOCK, data);
        data.copy(v.bytes, at * BLOCK);
        writeId++;
        v.state.fill(writeId, at, at + n);
        v.own.fill(1, at, at + n);
        touched.add(v.volumeId);
        count(v.parent ? 'clone write' : 'write', `${v.volumeId} blocks ${at}+${n}`);
      } else if (r < 0.5) {
        const v = pick(vols);
        const n = 1 + rng.int(64);
        const at = rng.int(BLOCKS - n + 1);
        await api.trim(v.volumeId, at * BLOCK, n * BLOCK);
        v.bytes.fill(0, at * BLOCK, (at + n) * BLOCK);
        v.state.fill(-1, at, at + n);
        v.own.fill(1, at, at + n);
        touched.add(v.volumeId);
        count('trim', `${v.volumeId} blocks ${at}+${n}`);
      } else if (r < 0.62) {
        if (snaps.length >= MAX_SNAPSHOTS) {
          // A full set would skip the step: then over some seeds too few snapshots are taken for
          // the model to mean much (the count checked at the end). One that nothing depends on
          // is deleted first, as the delete step does; with none, the step is skipped.
          const free = snaps.filter((x) => x.dependants.size === 0);
          if (free.length === 0) continue;
          await deleteSnapshot(pick(free), context);
        }
        const v = pick(vols);
        const res = await post(`/volumes/${v.volumeId}/snapshots`, {});
        expect(res.status, `${context}: ${res.body.toString()}`).toBe(201);
        const seq = res.json.commitSeq as number;
        const s: ModelSnapshot = {
          snapshotId: res.json.snapshotId,
          volumeId: v.volumeId,
          seq,
          bytes: Buffer.from(v.bytes),
          state: Int32Array.from(v.state),
          own: Uint8Array.from(v.own),
          chain: [{ volumeId: v.volumeId, maxSeq: seq }, ...(v.parent ? snapshots.get(v.parent)!.chain : [])],
          ...(v.parent ? { parentSnap: v.parent } : {}),
          dependants: new Set(),
        };
        snapshots.set(s.snapshotId, s);
        v.snapshots.add(s.snapshotId);
        if (v.parent) snapshots.get(v.parent)!.dependants.add(s.snapshotId);
        touched.add(s.snapshotId);
        count('snapshot', `${s.snapshotId} of ${v.volumeId}`);
      } else if (r < 0.68) {
        if (snaps.length === 0 || vols.length >= MAX_VOLUMES) continue;
        const s = pick(snaps);
        const clone = await api.createVolume({ sourceSnapshotId: s.snapshotId });
        volumes.set(clone.volumeId, {
          volumeId: clone.volumeId,
          bytes: Buffer.from(s.bytes),
          state: Int32Array.from(s.state),
          own: new Uint8Array(BLOCKS),
          parent: s.snapshotId,
          snapshots: new Set(),
        });
        s.dependants.add(clone.volumeId);
        touched.add(clone.volumeId);
        count('clone', `${clone.volumeId} of ${s.snapshotId}`);
      } else if (r < 0.76) {
        if (snaps.length === 0) continue;
        const s = pick(snaps);
        const res = await http(`${url}/snapshots/${s.snapshotId}`, { method: 'DELETE' });
        if (s.dependants.size > 0) {
          expect(res.status, `${context}: deleting a snapshot with dependants`).toBe(409);
          count('delete refused');
        } else {
          expect(res.status, `${context}: ${res.body.toString()}`).toBe(202);
          await deleted(s);
        }
      } else if (r < 0.8) {
        const clones = vols.filter((v) => v.volumeId !== base.volumeId);
        if (clones.length === 0) continue;
        const v = pick(clones);
        const res = await http(`${url}/volumes/${v.volumeId}`, { method: 'DELETE' });
        if (v.snapshots.size > 0) {
          expect([409, 503], `${context}: deleting a volume with snapshots`).toContain(res.status);
          count('volume delete refused');
        } else if (res.status === 503) {
          count('volume delete deferred'); // deleted snapshots of it are still being purged
        } else {
          expect(res.status, `${context}: ${res.body.toString()}`).toBe(202);
          volumes.delete(v.volumeId);
          if (v.parent) snapshots.get(v.parent)?.dependants.delete(v.volumeId);
          count('clone delete', v.volumeId);
        }
      } else if (r < 0.82) {
        const clones = vols.filter((v) => v.parent);
        if (clones.length === 0) continue;
        const v = pick(clones);
        const res = await http(`${url}/volumes/${v.volumeId}/flatten`, { method: 'POST' });
        expect(res.status, `${context}: ${res.body.toString()}`).toBe(202);
        // Run the flatten here, to its end, so the model knows when the parent is gone.
        for (let next = 0; ; ) {
          const out = await flattenStep(v.volumeId, next);
          if (out.flattened || out.skipped) break;
          next = out.pagesDone as number;
        }
        expect((await api.describe(v.volumeId)).json.parent, context).toBeUndefined();
        // Blocks it read through to the parent are now its own: data copied (a write of the same
        // bytes), trimmed ones left unmapped (they read as zeros without a parent).
        for (let i = 0; i < BLOCKS; i++) {
          if (v.own[i]) continue;
          if (v.state[i]! > 0) v.state[i] = ++writeId;
          else v.state[i] = 0;
        }
        snapshots.get(v.parent!)?.dependants.delete(v.volumeId);
        v.parent = undefined;
        touched.add(v.volumeId);
        count('flatten', v.volumeId);
      } else if (r < 0.86) {
        const own = snaps.filter((x) => volumes.has(x.volumeId));
        if (own.length === 0) continue;
        const x = pick(own);
        const v = volumes.get(x.volumeId)!;
        const res = await post(`/volumes/${v.volumeId}/rollback`, { snapshotId: x.snapshotId });
        if (x.chain.length > 1 && !v.parent) {
          // Taken while the volume was a clone, which has been flattened since: refused.
          expect(res.status, `${context}: ${res.body.toString()}`).toBe(409);
          count('rollback refused', `${v.volumeId} to ${x.snapshotId}`);
          continue;
        }
        expect(res.status, `${context}: ${res.body.toString()}`).toBe(200);
        v.bytes = Buffer.from(x.bytes);
        v.state = Int32Array.from(x.state);
        v.own = Uint8Array.from(x.own);
        touched.add(v.volumeId);
        count('rollback', `${v.volumeId} to ${x.snapshotId}`);
      } else if (r < 0.88) {
        const v = pick(vols);
        await collectVolume(v.volumeId, { queueContinuation: false });
        structural = true;
        count('gc', v.volumeId);
      } else if (r < 0.94) {
        if (snaps.length === 0) continue;
        const s = pick(snaps);
        const bases = snaps.filter((b) => s.chain.some((c) => c.volumeId === b.volumeId && b.seq <= c.maxSeq));
        const b = rng.next() < 0.7 && bases.length > 0 ? pick(bases) : null;
        const res = await http(`${url}/snapshots/${s.snapshotId}/changed-blocks?limit=10000${b ? `&base=${b.snapshotId}` : ''}`);
        expect(res.status, `${context}: ${res.body.toString()}`).toBe(200);
        expect(res.json.extents, `${context}: changed blocks of ${s.snapshotId} against ${b?.snapshotId ?? 'nothing'}`).toEqual(
          changedFromModel(b ? b.state : null, s.state),
        );
        count('changed-blocks');
      } else if (!rebuilt && op >= Math.floor(OPS / 3)) {
        const v = pick(vols);
        expect((await post(`/volumes/${v.volumeId}/checkpoints`, {})).status, context).toBeLessThan(300);
        await api.write(v.volumeId, 0, v.bytes.subarray(0, BLOCK)); // a commit after the checkpoint, replayed by the rebuild
        v.state[0] = ++writeId; // the same bytes, but a write: changed-block lists name it
        v.own[0] = 1;
        // The volume's page items and frozen pages are lost (a table restored without them): the
        // rebuild must bring back both from the checkpoint and the commits after it. (A folding
        // volume's tail is folded first: while the tail holds a commit, its pages are not lost.)
        await settle(v.volumeId);
        const lost = await deletePartition(v.volumeId);
        const rb = await post(`/volumes/${v.volumeId}/rebuild`, {});
        expect(rb.status, `${context}: ${rb.body.toString()}`).toBe(200);
        expect(rb.json.frozen?.rebuilt, `${context}: ${rb.body.toString()}`).toBe(true);
        expect(rb.json.pagesWritten + rb.json.frozen.written, context).toBe(lost);
        rebuilt = true;
        structural = true;
        count('checkpoint + rebuild');
      } else if (!evacuated && op >= Math.floor(OPS / 2)) {
        // Retire the drive holding a chunk of the base volume, over HTTP, and wait for it.
        const seg = (await pageMap().listSegmentRecords(base.volumeId).next()).value;
        if (!seg) continue;
        const loc = seg.locations[0]!;
        const [sled, drive] = [loc.bucket, loc.key.split('/')[0]!];
        const res = await post(`/drives/${sled}/${drive}/retire`, { reason: 'snapshot model' });
        expect(res.status, `${context}: ${res.body.toString()}`).toBe(202);
        let shown: any;
        for (let i = 0; i < 180; i++) {
          shown = (await http(`${url}/drives/${sled}/${drive}`)).json;
          if (shown.state === 'retired') break;
          await new Promise((res) => setTimeout(res, 500));
        }
        expect(shown.state, context).toBe('retired');
        evacuated = true;
        structural = true;
        count('evacuation');
      } else continue;
      if (structural) await verifyAll(context);
      else {
        const vs = [...volumes.values()];
        const ss = [...snapshots.values()];
        for (const v of vs) if (touched.has(v.volumeId)) await verifyVolume(v, context);
        for (const x of ss) if (touched.has(x.snapshotId)) await verifySnapshot(x, context);
        // And one other, a volume or a snapshot in turn, every tenth step.
        if (op % 20 === 0 && vs.length > 0) await verifyVolume(pick(vs), context);
        else if (op % 20 === 10 && ss.length > 0) await verifySnapshot(pick(ss), context);
      }
    }
    await verifyAll(`the end (seed ${rng.seed})`);
    console.log(`snapshot model: ${JSON.stringify(counts)}`);
    expect(counts.snapshot ?? 0).toBeGreaterThan(OPS / 20);
    expect(counts['changed-blocks'] ?? 0).toBeGreaterThan(0);
    expect(evacuated && rebuilt).toBe(true);
  }, 1_200_000);
});

/**
 * Folds a folding volume's whole tail into its page items (docs/page-map.md, "Folding"), so that
 * they alone are the map at the head; does nothing on a volume that does not fold.
 */
async function settle(volumeId: string): Promise<void> {
  for (let round = 0; round < 20; round++) {
    const v = await pageMap().getVolume(volumeId);
    if (!v || !isFolding(v) || v.foldedSeq === v.headSeq) return;
    await foldVolume(volumeId);
  }
  throw new Error(`the tail of ${volumeId} did not fold in 20 rounds`);
}

/** Deletes every page item and frozen page of a volume, as a lost table would; returns how many. */
async function deletePartition(volumeId: string): Promise<number> {
  let n = 0;
  for (const partition of [volumeId, `${volumeId}#frozen`]) {
    const keys: Record<string, AttributeValue>[] = [];
    let start: Record<string, AttributeValue> | undefined;
    do {
      const out = await dynamo().send(
        new QueryCommand({
          TableName: config().pagesTable,
          KeyConditionExpression: 'volumeId = :v',
          ExpressionAttributeValues: { ':v': { S: partition } },
          ProjectionExpression: 'volumeId, page',
          ExclusiveStartKey: start,
        }),
      );
      keys.push(...(out.Items ?? []));
      start = out.LastEvaluatedKey;
    } while (start);
    for (let i = 0; i < keys.length; i += 25) {
      const out = await dynamo().send(
        new BatchWriteItemCommand({ RequestItems: { [config().pagesTable]: keys.slice(i, i + 25).map((Key) => ({ DeleteRequest: { Key } })) } }),
      );
      expect(Object.keys(out.UnprocessedItems ?? {})).toHaveLength(0);
    }
    n += keys.length;
  }
  return n;
}
