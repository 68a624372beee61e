/**
 * Group snapshots (docs/consistency-groups.md): one snapshot per member at one point in time,
 * in one transaction for groups that fit one, and behind write barriers for larger ones;
 * listing, describing and deleting them, and aborting one whose coordinator died.
 */
import { inTail } from '../data/tail.ts';
import { queueFold } from '../maintenance/fold.ts';
import { randomBytes } from 'node:crypto';
import { config } from '../core/config.ts';
import { ConflictError, FencedError, InvalidInputError, NotFoundError, UnavailableError } from '../core/errors.ts';
import type { GroupMemberSnapshot, GroupRecord, GroupSnapshotRecord, MemberRefusal } from '../core/groups.ts';
import type { SnapshotRecord, VolumeRecord } from '../core/records.ts';
import { sleep } from '../core/async.ts';
import { fitPage, pageLimit, pageStart } from '../core/paging.ts';
import type { WriterIdentity } from '../data/segments.ts';
import { commitWriter } from '../data/write.ts';
import { groupStore, pageMap } from '../ports.ts';
import { requireGroup } from './groups.ts';
import { checkKey, writeRefusal } from './reservations.ts';
import { MAX_SNAPSHOTS_PER_VOLUME, deleteSnapshot, queuePurge, snapshotIdFor } from './snapshots.ts';

const GROUP_SNAPSHOT_ATTEMPT_MAX = 8;
const GROUP_SNAPSHOT_ID = /^gsnap-([0-9a-f]{16})-[0-9a-f]{8}$/;

export interface GroupSnapshotView {
  groupSnapshotId: string;
  groupId: string;
  state: string;
  createdAt: string;
  snapshots: Array<{ volumeId: string; snapshotId: string; commitSeq: number }>;
}

function view(gs: GroupSnapshotRecord): GroupSnapshotView {
  return {
    groupSnapshotId: gs.groupSnapshotId,
    groupId: gs.groupId,
    state: gs.state,
    createdAt: gs.createdAt,
    snapshots: gs.members.map((m) => ({ volumeId: m.volumeId, snapshotId: m.snapshotId, commitSeq: m.seq })),
  };
}

/** The group a group snapshot id belongs to (the id carries it). */
export function groupOfSnapshot(groupSnapshotId: string): string {
  const m = GROUP_SNAPSHOT_ID.exec(groupSnapshotId);
  if (!m) throw new NotFoundError(`group snapshot ${groupSnapshotId} does not exist`);
  return `cg-${m[1]}`;
}

/** What the coordinator may be told to do differently (tests and the bench; the defaults are the configuration). */
export interface CoordinatorOptions {
  /** The largest group taken in one transaction (config `groupTransactionMembers`). */
  transactionMembers?: number;
  /** The barriers' lease (config `groupBarrierLeaseMs`). */
  leaseMs?: number;
  /**
   * The reservation key to present on each member, by volume id (members attached by different
   * gateways hold different keys); members not named present the requester's key.
   */
  reservationKeys?: Record<string, string>;
  /** Run at steps of the barrier path (a test kills the coordinator in them): once every barrier is up, after the first transaction of step 4, after the commit point. */
  hooks?: {
    afterBarriers?: (groupSnapshotId: string) => Promise<void>;
    afterFirstMembers?: (groupSnapshotId: string) => Promise<void>;
    afterCommit?: (groupSnapshotId: string) => Promise<void>;
  };
}

/** The requester as it presents itself on one member: with that member's key when one was given for it. */
function memberRequester(requester: WriterIdentity & { keys?: Record<string, string> }, volumeId: string): WriterIdentity {
  const key = requester.keys?.[volumeId] ?? requester.key;
  return key === undefined ? { id: requester.id } : { id: requester.id, key };
}

/** Parses the optional body of a group snapshot request: `{ reservationKeys?: { <volumeId>: <key> } }`. */
export function parseGroupSnapshotBody(body: Record<string, unknown>): CoordinatorOptions {
  const extra = Object.keys(body).filter((k) => k !== 'reservationKeys');
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; allowed: reservationKeys`);
  const keys = body.reservationKeys;
  if (keys === undefined) return {};
  if (typeof keys !== 'object' || keys === null || Array.isArray(keys)) throw new InvalidInputError('reservationKeys must map volume ids to keys');
  const out: Record<string, string> = {};
  for (const [volumeId, key] of Object.entries(keys)) out[volumeId] = checkKey(key, `reservationKeys.${volumeId}`);
  return { reservationKeys: out };
}

/** A member's snapshot record at its head, and the requester as fenced on it; throws when the member cannot be snapshotted. */
function memberSnapshot(v: VolumeRecord | null, volumeId: string, g: GroupRecord, gsid: string, asRequested: WriterIdentity, state: 'ready' | 'pending') {
  const requester = memberRequester(asRequested, volumeId);
  if (!v || v.state !== 'active') throw new NotFoundError(`volume ${volumeId} of consistency group ${g.groupId} does not exist or is not serving`);
  if (v.groupId !== g.groupId) throw new ConflictError(`volume ${volumeId} left consistency group ${g.groupId} meanwhile; retry`);
  const refused = writeRefusal(volumeId, v.reservations, requester.key);
  if (refused) throw new FencedError(`${refused} (taking a group snapshot is refused like a write)`);
  const record: SnapshotRecord = {
    volumeId,
    snapshotId: snapshotIdFor(volumeId, v.headSeq),
    seq: v.headSeq,
    sizeBytes: v.sizeBytes,
    createdAt: new Date().toISOString(),
    state,
    dependants: [],
    groupSnapshotId: gsid,
  };
  if (v.parent) record.parent = v.parent;
  const writer = commitWriter(
    requester.key === undefined ? { id: requester.id } : { id: requester.id, key: requester.key, generation: v.reservations.registrants[requester.key]! },
  );
  return { record, writer, inTail: inTail(v, v.headSeq) } satisfies GroupMemberSnapshot;
}

/** The answer to members refused in a transaction: an error to give, or null to try again (a head moved, a barrier, a purge). */
function refusalError(refused: readonly MemberRefusal[], g: GroupRecord, asRequested: WriterIdentity): Error | null {
  for (const r of refused) {
    const requester = memberRequester(asRequested, r.volumeId);
    const v = r.current;
    if (!v || v.state !== 'active') return new NotFoundError(`volume ${r.volumeId} of consistency group ${g.groupId} does not exist or is not serving`);
    if (v.groupId !== g.groupId) return new ConflictError(`volume ${r.volumeId} left consistency group ${g.groupId} meanwhile; retry`);
    const fenced = writeRefusal(r.volumeId, v.reservations, requester.key);
    if (fenced) return new FencedError(`${fenced} (taking a group snapshot is refused like a write)`);
  }
  return null;
}

/**
 * `POST /consistency-groups/{id}/snapshots`: one snapshot of every member, all at one point in
 * time (docs/consistency-groups.md).
 */
export async function createGroupSnapshot(groupId: string, requester: WriterIdentity, opts: CoordinatorOptions = {}): Promise<GroupSnapshotView> {
  const g = await requireGroup(groupId);
  const stranger = Object.keys(opts.reservationKeys ?? {}).find((v) => !g.members.includes(v));
  if (stranger) throw new InvalidInputError(`reservationKeys names ${stranger}, which is not a member of consistency group ${groupId}`);
  if (opts.reservationKeys) requester = { ...requester, keys: opts.reservationKeys } as WriterIdentity;
  const purgeAfter: string[] = [];
  const existing = await Promise.all(g.members.map((volumeId) => pageMap().listSnapshots(volumeId)));
  existing.forEach((records, i) => {
    if (records.filter((s) => s.state === 'ready').length >= MAX_SNAPSHOTS_PER_VOLUME) {
      throw new InvalidInputError(`volume ${g.members[i]} has ${MAX_SNAPSHOTS_PER_VOLUME} snapshots, the most it may have; delete some first`);
    }
    if (records.some((s) => s.state === 'deleting')) purgeAfter.push(g.members[i]!);
  });
  const atOnce = g.members.length <= (opts.transactionMembers ?? config().groupTransactionMembers);
  let out: GroupSnapshotRecord | null = atOnce ? await snapshotAtOnce(g, requester) : null;
  // Writers that keep moving the heads starve the one transaction: the barriers then hold them
  // back for the few round trips the snapshot takes.
  out ??= await snapshotBehindBarriers(g, requester, opts);
  // Deleted snapshots below the new ones can be purged now (the newest tag waits for a newer snapshot).
  for (const volumeId of purgeAfter) await queuePurge(volumeId);
  return view(out);
}

function newGroupSnapshotId(groupId: string): string {
  return `gsnap-${groupId.slice('cg-'.length)}-${randomBytes(4).toString('hex')}`;
}

/**
 * Each folding member's new tag may lie in its tail: the worker folds up to it, so that the next
 * group snapshot and the readers find it folded past (docs/page-map.md, "Snapshots on a tail").
 */
async function queueTagFolds(members: readonly GroupMemberSnapshot[]): Promise<void> {
  await Promise.all(members.filter((m) => m.inTail).map((m) => queueFold(m.record.volumeId, m.record.seq)));
}

/** The one-transaction path: no barrier, no wait for writers. Null when commits kept moving the heads (GROUP_SNAPSHOT_ATTEMPT_MAX attempts). */
async function snapshotAtOnce(g: GroupRecord, requester: WriterIdentity): Promise<GroupSnapshotRecord | null> {
  let known: Array<VolumeRecord | null> | null = null;
  for (let attempt = 0; attempt < GROUP_SNAPSHOT_ATTEMPT_MAX; attempt++) {
    if (attempt > 0 && known === null) await sleep(Math.random() * Math.min(200, 5 * 2 ** attempt));
    const gsid = newGroupSnapshotId(g.groupId);
    const volumes: Array<VolumeRecord | null> = known ?? (await groupStore().getVolumes(g.members));
    const members = volumes.map((v, i) => memberSnapshot(v, g.members[i]!, g, gsid, requester, 'ready'));
    const gs: GroupSnapshotRecord = {
      groupId: g.groupId,
      groupSnapshotId: gsid,
      state: 'ready',
      members: members.map((m) => ({ volumeId: m.record.volumeId, snapshotId: m.record.snapshotId, seq: m.record.seq })),
      createdAt: new Date().toISOString(),
      leaseExpiresAtMs: 0,
    };
    const refused = await groupStore().takeGroupSnapshotAtOnce(gs, members);
    if (refused.length === 0) {
      await queueTagFolds(members);
      return gs;
    }
    const err = refusalError(refused, g, requester);
    if (err) throw err;
    // When commits only moved heads, try again at once on the heads the refusal returned (the
    // conditions check them again); a barrier, a purge or anything else backs off and reads anew.
    const nowMs = Date.now();
    const headsMoved = refused.every((r) => r.current && r.current.snapPurge === undefined && !(r.current.barrier && r.current.barrier.expiresAtMs >= nowMs));
    known = headsMoved && attempt % 4 !== 3 ? volumes.map((v) => refused.find((r) => r.volumeId === v?.volumeId)?.current ?? v) : null;
  }
  return null;
}

/** The barrier path (docs/consistency-groups.md, steps 1 to 7). */
async function snapshotBehindBarriers(g: GroupRecord, requester: WriterIdentity, opts: CoordinatorOptions): Promise<GroupSnapshotRecord> {
  const perTransaction = opts.transactionMembers ?? config().groupTransactionMembers;
  const leaseMs = opts.leaseMs ?? config().groupBarrierLeaseMs;
  const gsid = newGroupSnapshotId(g.groupId);
  const expiresAtMs = Date.now() + leaseMs;
  const gs: GroupSnapshotRecord = {
    groupId: g.groupId,
    groupSnapshotId: gsid,
    state: 'pending',
    members: [],
    createdAt: new Date().toISOString(),
    leaseExpiresAtMs: expiresAtMs,
  };
  await groupStore().putGroupSnapshot(gs); // 1
  const raised: string[] = [];
  try {
    // 2: every member's barrier, in one transaction.
    if (!(await groupStore().raiseBarriers(g.members, g.groupId, { id: gsid, expiresAtMs }))) {
      throw new ConflictError(`another group snapshot of consistency group ${g.groupId} holds its members (or one left the group); retry`);
    }
    raised.push(...g.members);
    await opts.hooks?.afterBarriers?.(gsid);
    // 3: the heads, which no commit moves while the barriers are up.
    const volumes = await groupStore().getVolumes(g.members);
    const members = volumes.map((v, i) => memberSnapshot(v, g.members[i]!, g, gsid, requester, 'pending'));
    // 4: snapshot points and pending records, in transactions of `perTransaction` members.
    for (let i = 0; i < members.length; i += perTransaction) {
      const refused = await groupStore().snapshotMembers(g.groupId, members.slice(i, i + perTransaction));
      if (refused.length > 0) {
        throw (
          refusalError(refused, g, requester) ??
          new UnavailableError(`a member of consistency group ${g.groupId} committed past its barrier (the lease passed); retry`, { retryAfterSeconds: 1 })
        );
      }
      if (i === 0) await opts.hooks?.afterFirstMembers?.(gsid);
    }
    // 5: writers go on.
    await groupStore().dropBarriers(raised, gsid);
    raised.length = 0;
    // 6: the commit point.
    const list = members.map((m) => ({ volumeId: m.record.volumeId, snapshotId: m.record.snapshotId, seq: m.record.seq }));
    if (!(await groupStore().setGroupSnapshotState(g.groupId, gsid, 'pending', 'ready', { lease: 'live', members: list }))) {
      throw new UnavailableError(`group snapshot ${gsid} took longer than its lease of ${leaseMs} ms and was abandoned; retry`, { retryAfterSeconds: 1 });
    }
    await opts.hooks?.afterCommit?.(gsid);
    // 7: the members become ordinary snapshots.
    await groupStore().readyMembers(members.map((m) => m.record));
    await queueTagFolds(members);
    return { ...gs, state: 'ready', members: list };
  } catch (err) {
    if (raised.length > 0) await groupStore().dropBarriers(raised, gsid);
    await abortGroupSnapshot(g.groupId, gsid, false);
    throw err;
  }
}

/**
 * Aborts a pending group snapshot: `pending -> deleting` (by another party only once its lease
 * has passed), then every member record it wrote goes to `deleting` and is purged like any
 * deleted snapshot, then the item goes. Returns false when it was committed instead.
 */
export async function abortGroupSnapshot(groupId: string, groupSnapshotId: string, leasePassedOnly: boolean): Promise<boolean> {
  const store = groupStore();
  const moved = await store.setGroupSnapshotState(groupId, groupSnapshotId, 'pending', 'deleting', leasePassedOnly ? { lease: 'passed' } : {});
  if (!moved) {
    const now = await store.getGroupSnapshot(groupId, groupSnapshotId);
    if (now && now.state !== 'deleting') return false;
    if (!now) return true;
  }
  const g = await store.getGroup(groupId);
  for (const volumeId of g?.members ?? []) {
    const written = (await pageMap().listSnapshots(volumeId)).filter((s) => s.groupSnapshotId === groupSnapshotId && s.state !== 'deleting');
    for (const s of written) await store.setSnapshotState(s, s.state, 'deleting');
    if (written.length > 0) await queuePurge(volumeId);
  }
  await store.deleteGroupSnapshotItem(groupId, groupSnapshotId);
  return true;
}

/** A group snapshot as readers see it: a pending one past its lease is aborted (null), a ready one has its members finished. */
async function settle(gs: GroupSnapshotRecord): Promise<GroupSnapshotRecord | null> {
  if (gs.state === 'deleting') return null;
  if (gs.state === 'pending') {
    if (gs.leaseExpiresAtMs >= Date.now()) return gs;
    if (await abortGroupSnapshot(gs.groupId, gs.groupSnapshotId, true)) return null;
    const now = await groupStore().getGroupSnapshot(gs.groupId, gs.groupSnapshotId);
    return now ? settle(now) : null;
  }
  return gs;
}

/** Finishes step 7 for a ready group snapshot whose coordinator stopped before it. */
async function finishMembers(gs: GroupSnapshotRecord): Promise<void> {
  const records = await Promise.all(gs.members.map((m) => pageMap().getSnapshot(m.volumeId, m.snapshotId)));
  await Promise.all(records.map((r) => (r?.state === 'pending' ? groupStore().setSnapshotState(r, 'pending', 'ready') : undefined)));
}

export async function describeGroupSnapshot(groupId: string, groupSnapshotId: string): Promise<GroupSnapshotView> {
  if (groupOfSnapshot(groupSnapshotId) !== groupId) throw new NotFoundError(`group snapshot ${groupSnapshotId} does not exist`);
  const raw = await groupStore().getGroupSnapshot(groupId, groupSnapshotId);
  const gs = raw ? await settle(raw) : null;
  if (!gs) throw new NotFoundError(`group snapshot ${groupSnapshotId} does not exist`);
  if (gs.state === 'ready') await finishMembers(gs);
  return view(gs);
}

/**
 * A group snapshot that is whole and finished, for backing it up (docs/consistency-groups.md,
 * "Backing up"): 404 when absent (or aborted), 409 while it is being taken or deleted, or when a
 * member snapshot was deleted on its own since.
 */
export async function requireWholeGroupSnapshot(groupId: string, groupSnapshotId: string): Promise<GroupSnapshotRecord> {
  if (groupOfSnapshot(groupSnapshotId) !== groupId) throw new NotFoundError(`group snapshot ${groupSnapshotId} does not exist`);
  const raw = await groupStore().getGroupSnapshot(groupId, groupSnapshotId);
  if (!raw) throw new NotFoundError(`group snapshot ${groupSnapshotId} does not exist`);
  if (raw.state === 'deleting') throw new ConflictError(`group snapshot ${groupSnapshotId} is being deleted`);
  const gs = await settle(raw);
  if (!gs) throw new NotFoundError(`group snapshot ${groupSnapshotId} does not exist (it was aborted)`);
  if (gs.state === 'pending') throw new ConflictError(`group snapshot ${groupSnapshotId} is still being taken; back it up once it is ready`);
  await finishMembers(gs);
  const records = await Promise.all(gs.members.map((m) => pageMap().getSnapshot(m.volumeId, m.snapshotId)));
  const gone = gs.members.find((_, i) => records[i]?.state !== 'ready');
  if (gone) throw new ConflictError(`snapshot ${gone.snapshotId} of member ${gone.volumeId} is gone; group snapshot ${groupSnapshotId} is no longer whole`);
  return gs;
}

/** Whether `id` is a group snapshot id of group `groupId` (false for anything else: never a 404). */
export function isGroupSnapshotOf(id: string, groupId: string): boolean {
  const m = GROUP_SNAPSHOT_ID.exec(id);
  return m !== null && groupId === `cg-${m[1]}`;
}

/**
 * `GET /consistency-groups/{id}/snapshots`: one page of the group's group snapshots in id order,
 * paged as every list is (shared/core/paging.ts): at most `limit`, and `next` (the last one's id)
 * while more may follow. A `next` that is not a group snapshot id of this group is a 400 before
 * anything is read; one naming a group snapshot deleted since goes on after its place. Each
 * entry is settled as a read of it is (an expired `pending` one is aborted and left out), only
 * as far as the page reaches.
 */
export async function listGroupSnapshotViews(
  groupId: string,
  limitParam: string | undefined,
  nextParam: string | undefined,
): Promise<{ groupSnapshots: GroupSnapshotView[]; next?: string }> {
  const limit = pageLimit(limitParam);
  const start = pageStart(nextParam, `the group snapshots of ${groupId}`, (id) => isGroupSnapshotOf(id, groupId));
  await requireGroup(groupId);
  // One more than the page: whether it exists says whether the list goes on.
  const kept: GroupSnapshotRecord[] = [];
  let after = start;
  for (;;) {
    const want = limit + 1 - kept.length;
    const batch = await groupStore().listGroupSnapshots(groupId, { ...(after === undefined ? {} : { after }), limit: want });
    for (const gs of await Promise.all(batch.map(settle))) if (gs !== null) kept.push(gs);
    if (batch.length < want || kept.length > limit) break;
    after = batch[batch.length - 1]!.groupSnapshotId;
  }
  const views = kept.slice(0, limit).map(view);
  const page = fitPage(views, (v) => v.groupSnapshotId, kept.length > limit ? views[views.length - 1]!.groupSnapshotId : undefined);
  return page.next === undefined ? { groupSnapshots: page.items } : { groupSnapshots: page.items, next: page.next };
}

/**
 * `DELETE /consistency-groups/{id}/snapshots/{gsid}`: every member snapshot is deleted as
 * `DELETE /snapshots/{id}` does, then the item. 409 (nothing changed) while a clone reads
 * through a member, or while the group snapshot is still being taken.
 */
export async function deleteGroupSnapshot(groupId: string, groupSnapshotId: string): Promise<GroupSnapshotView> {
  if (groupOfSnapshot(groupSnapshotId) !== groupId) throw new NotFoundError(`group snapshot ${groupSnapshotId} does not exist`);
  const raw = await groupStore().getGroupSnapshot(groupId, groupSnapshotId);
  if (!raw) throw new NotFoundError(`group snapshot ${groupSnapshotId} does not exist`);
  if (raw.state === 'pending') {
    if (raw.leaseExpiresAtMs >= Date.now()) throw new ConflictError(`group snapshot ${groupSnapshotId} is still being taken; retry shortly`);
    await abortGroupSnapshot(groupId, groupSnapshotId, true);
    return { ...view(raw), state: 'deleted' };
  }
  if (raw.state === 'ready') {
    const records = await Promise.all(raw.members.map((m) => pageMap().getSnapshot(m.volumeId, m.snapshotId)));
    const held = records.find((r) => r && r.state !== 'deleting' && r.dependants.length > 0);
    if (held)
      throw new ConflictError(
        `snapshot ${held.snapshotId} of this group snapshot has dependants (${held.dependants.join(', ')}); flatten or delete them first`,
      );
    await groupStore().setGroupSnapshotState(groupId, groupSnapshotId, 'ready', 'deleting');
  }
  for (const m of raw.members) {
    const r = await pageMap().getSnapshot(m.volumeId, m.snapshotId);
    if (r?.state === 'pending') await groupStore().setSnapshotState(r, 'pending', 'ready');
    if (r && r.state !== 'deleting') await deleteSnapshot(m.snapshotId);
  }
  await groupStore().deleteGroupSnapshotItem(groupId, groupSnapshotId);
  return { ...view(raw), state: 'deleted' };
}
