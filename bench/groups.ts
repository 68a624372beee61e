/**
 * Consistency groups (docs/consistency-groups.md): group snapshot latency for 2, 8 and 32
 * members, on the one-transaction path and on the barrier path (two transactions of members),
 * with exact request counts; and the longest write stall a writer sees while group snapshots
 * are taken, against its usual commit latency, as a ratio measured in one run.
 *
 * The stall: WRITERS writers, each on its own member of an 8-volume group, write 4 KiB blocks
 * one after another. First with no group snapshot (the baseline: their median write latency),
 * then while group snapshots are taken back to back on one path, then on the other. A write's
 * latency is from the call to its acknowledgement; the longest during snapshots is the stall.
 * Group snapshots run in this process (shared/control/group-snapshots.ts), as the API would.
 */
import { performance } from 'node:perf_hooks';
import { requestCounts, resetRequestCounts } from '#shared/aws/clients.ts';
import { createGroup } from '#shared/control/groups.ts';
import { createGroupSnapshot, deleteGroupSnapshot } from '#shared/control/group-snapshots.ts';
import { createVolume } from '#shared/control/volumes.ts';
import { writeData } from '#shared/data/write.ts';

const BLOCK = 4096;
const SIZES = [2, 8, 32];
const REPEATS = 5;
const WRITERS = 4;
const STALL_SNAPSHOTS = 20;

export interface GroupBenchContext {
  idle(): Promise<void>;
  table(rows: Array<Record<string, string | number>>): void;
  section(title: string): void;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;

async function makeGroup(members: number): Promise<{ groupId: string; volumes: string[] }> {
  const volumes: string[] = [];
  for (let i = 0; i < members; i++) {
    const v = await createVolume({ sizeBytes: 4 * 1024 * 1024 }, undefined);
    await writeData(v.volumeId, 0, Buffer.alloc(BLOCK, i + 1));
    volumes.push(v.volumeId);
  }
  const g = await createGroup({ name: `bench-${members}`, volumeIds: volumes }, undefined);
  return { groupId: g.groupId, volumes };
}

export async function benchGroups(ctx: GroupBenchContext): Promise<void> {
  ctx.section('consistency groups: group snapshot latency (median of 5) and requests per group snapshot');
  const rows: Array<Record<string, string | number>> = [];
  for (const members of SIZES) {
    const { groupId } = await makeGroup(members);
    await ctx.idle();
    for (const path of ['one transaction', 'barriers'] as const) {
      // The barrier path with two transactions of members (half the group each).
      const opts = path === 'barriers' ? { transactionMembers: Math.max(1, Math.ceil(members / 2)) } : {};
      const times: number[] = [];
      let requests: Record<string, number> = {};
      for (let r = 0; r < REPEATS; r++) {
        await ctx.idle(); // the purges queued by the last delete run first, so that the counts are the snapshot's alone
        resetRequestCounts();
        const t0 = performance.now();
        const gs = await createGroupSnapshot(groupId, { id: 'bench' }, opts);
        times.push(performance.now() - t0);
        requests = requestCounts().requests;
        await deleteGroupSnapshot(groupId, gs.groupSnapshotId);
      }
      const ddb = (op: string) => requests[`DynamoDB:${op}`] ?? 0;
      rows.push({
        members,
        path,
        'median ms': median(times).toFixed(1),
        'max ms': Math.max(...times).toFixed(1),
        TransactWriteItems: ddb('TransactWriteItems'),
        UpdateItem: ddb('UpdateItem'),
        GetItem: ddb('GetItem'),
        BatchGetItem: ddb('BatchGetItem'),
        Query: ddb('Query'),
        PutItem: ddb('PutItem'),
      });
    }
  }
  ctx.table(rows);

  ctx.section(`consistency groups: the longest write stall during group snapshots (${WRITERS} writers on an 8-volume group)`);
  const { groupId, volumes } = await makeGroup(8);
  await ctx.idle();
  const phase = async (snapshots: (() => Promise<void>) | null, writesEach: number): Promise<number[]> => {
    const latencies: number[] = [];
    let stop = false;
    const writer = async (w: number) => {
      for (let i = 0; snapshots ? !stop : i < writesEach; i++) {
        const t0 = performance.now();
        await writeData(volumes[w]!, ((i % 256) + 1) * BLOCK, Buffer.alloc(BLOCK, i & 0xff));
        latencies.push(performance.now() - t0);
      }
    };
    const writers = Array.from({ length: WRITERS }, (_, w) => writer(w));
    if (snapshots) {
      await new Promise((resolve) => setTimeout(resolve, 200)); // the writers are under way
      await snapshots();
      stop = true;
    }
    await Promise.all(writers);
    return latencies;
  };
  const baseline = await phase(null, 25);
  const usual = median(baseline);
  const stallRows: Array<Record<string, string | number>> = [
    { phase: 'no group snapshots', writes: baseline.length, 'median ms': usual.toFixed(1), 'p99 ms': percentile(baseline, 0.99).toFixed(1), 'max ms': Math.max(...baseline).toFixed(1), 'max / usual': (Math.max(...baseline) / usual).toFixed(2) },
  ];
  for (const path of ['one transaction', 'barriers'] as const) {
    const opts = path === 'barriers' ? { transactionMembers: 4 } : {};
    const snapTimes: number[] = [];
    const latencies = await phase(async () => {
      for (let i = 0; i < STALL_SNAPSHOTS; i++) {
        const t0 = performance.now();
        const gs = await createGroupSnapshot(groupId, { id: 'bench' }, opts);
        snapTimes.push(performance.now() - t0);
        await deleteGroupSnapshot(groupId, gs.groupSnapshotId);
      }
    }, 0);
    const longest = Math.max(...latencies);
    stallRows.push({
      phase: `${STALL_SNAPSHOTS} group snapshots, ${path} (median ${median(snapTimes).toFixed(0)} ms each)`,
      writes: latencies.length,
      'median ms': median(latencies).toFixed(1),
      'p99 ms': percentile(latencies, 0.99).toFixed(1),
      'max ms': longest.toFixed(1),
      'max / usual': (longest / usual).toFixed(2),
    });
  }
  ctx.table(stallRows);
  console.log('max / usual: the longest write latency in the phase over the median write latency with no group snapshots (same run).');
}
