/**
 * Backups (docs/backup.md): starting one (the base is the newest finished backup on the
 * snapshot's chain), the `backup-volume` job that ships the changed blocks in packs, and what
 * the API shows.
 */
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { ConflictError, InvalidInputError, NotFoundError } from '../core/errors.ts';
import type { SnapshotRecord } from '../core/records.ts';
import { vaultConfig } from '../core/vault-config.ts';
import { vaultS3 } from '../aws/vault-clients.ts';
import { crc32c, crc32cBase64 } from '../data/crc32c.ts';
import { readSnapshotData } from '../data/read.ts';
import { checkSnapshotIdField, requireSnapshot } from '../data/views.ts';
import { changedBlocks } from '../control/snapshots.ts';
import { pageMap, workQueue } from '../ports.ts';
import { addChild, changeBackup, getBackup, listBackups, listBackupsPage, listPacks, putNewBackup, putPack } from './catalog.ts';
import { fitPage, pageLimit, pageStart } from '../core/paging.ts';
import { isBackupId, isBackupOf, newBackupId, packIdOf, packKey, type BackupRecord, type PackExtent, type PackRecord } from './records.ts';
import { failureText, forgetJobRecord, readBackupOrJob, recordJobAtPrimary, settleBackup, type BackupJobRecord } from './job-records.ts';

/** Packs shipped per message; then the job queues itself again (a Lambda run stays short). */
export const PACKS_PER_MESSAGE = 8;
/** Bytes read from the snapshot at a time (the read path's limit), and reads in flight ahead of the packing. */
const READ_BYTES = 4 * 1024 * 1024;
const READ_AHEAD = 6;
/** The queue's maxReceiveCount (`MAX_RECEIVE_COUNT`, cdk/contract.ts): on this receive a failing job records that it failed. */
export const LAST_RECEIVE = 5;

/** What the API shows of a backup: the record, with rate and ETA while it runs. */
export interface BackupView extends Omit<BackupRecord, 'version' | 'layers'> {
  packs: number;
  fractionDone: number;
  rateBytesPerSecond?: number;
  etaSeconds?: number;
}

export function backupView(r: BackupRecord, now = Date.now()): BackupView {
  const { version: _v, layers, ...rest } = r;
  const out: BackupView = {
    ...rest,
    packs: layers.length,
    fractionDone: r.state === 'complete' ? 1 : r.bytesToShip === 0 ? 0 : r.bytesShipped / r.bytesToShip,
  };
  if (r.state === 'running' && r.startedAt) {
    const seconds = (now - Date.parse(r.startedAt)) / 1000;
    if (seconds > 0 && r.bytesShipped > 0) {
      out.rateBytesPerSecond = Math.round(r.bytesShipped / seconds);
      out.etaSeconds = Math.round(Math.max(0, r.bytesToShip - r.bytesShipped) / out.rateBytesPerSecond);
    }
  }
  return out;
}

/** The snapshots on `snap`'s chain: its own volume's at or before it, then each ancestor's at or before the branch point. */
async function chainPoints(snap: SnapshotRecord): Promise<Array<{ volumeId: string; seq: number }>> {
  const points = [{ volumeId: snap.volumeId, seq: snap.seq }];
  let parent = snap.parent;
  for (let depth = 0; parent && depth < 16; depth++) {
    points.push({ volumeId: parent.volumeId, seq: parent.seq });
    parent = (await pageMap().getSnapshot(parent.volumeId, parent.snapshotId))?.parent;
  }
  return points;
}

/**
 * The base for a backup of `snap`: the newest complete backup on its chain whose snapshot still
 * exists at the primary (the changed-block list needs it), own volume first.
 */
async function chooseBase(snap: SnapshotRecord): Promise<BackupRecord | undefined> {
  const points = await chainPoints(snap);
  for (const point of points) {
    const candidates = (await listBackups(point.volumeId))
      .filter((b) => b.state === 'complete' && b.snapshotSeq <= point.seq)
      .sort((a, b) => b.snapshotSeq - a.snapshotSeq || (a.createdAt < b.createdAt ? 1 : -1));
    for (const b of candidates) {
      const s = await pageMap().getSnapshot(b.volumeId, b.snapshotId);
      if (s && s.state === 'ready') return b;
    }
  }
  return undefined;
}

/** `POST /volumes/{id}/backups { snapshotId }`: records the backup and queues its job (202). */
export async function startBackup(volumeId: string, body: unknown): Promise<{ backupId: string; base?: string; state: string }> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidInputError('the body must be a JSON object with snapshotId');
  const extra = Object.keys(body).filter((k) => k !== 'snapshotId');
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; a backup takes snapshotId`);
  const snapshotId = checkSnapshotIdField((body as { snapshotId?: unknown }).snapshotId, 'snapshotId');
  await checkBackupable(volumeId, snapshotId);
  return beginBackup(volumeId, snapshotId, newBackupId(volumeId));
}

/** 404 for a snapshot that is missing or not the volume's, 409 while a backup of it is queued or running. */
export async function checkBackupable(volumeId: string, snapshotId: string): Promise<void> {
  const { snapshot } = await requireSnapshot(snapshotId);
  if (snapshot.volumeId !== volumeId) throw new NotFoundError(`snapshot ${snapshotId} is not a snapshot of volume ${volumeId}`);
  const ofSnapshot = (await listBackups(volumeId)).filter((b) => b.snapshotId === snapshotId);
  const running = (await Promise.all(ofSnapshot.map(settleBackup))).find((b) => b.state === 'queued' || b.state === 'running');
  if (running) throw new ConflictError(`backup ${running.backupId} of snapshot ${snapshotId} is already ${running.state}`);
}

/** Records the backup `backupId` of a checked snapshot (its base chosen now) and queues its job. */
export async function beginBackup(volumeId: string, snapshotId: string, backupId: string): Promise<{ backupId: string; base?: string; state: string }> {
  const { snapshot, volume } = await requireSnapshot(snapshotId);
  const now = new Date().toISOString();
  let base: BackupRecord | undefined;
  // A base being deleted refuses new children; choose again (at worst, a full backup).
  for (let attempt = 0; attempt < 4; attempt++) {
    base = await chooseBase(snapshot);
    if (!base || (await addChild(base.backupId, backupId, true))) break;
    base = undefined;
  }
  const record: BackupRecord = {
    backupId,
    volumeId,
    snapshotId,
    snapshotSeq: snapshot.seq,
    sizeBytes: snapshot.sizeBytes,
    blockSizeBytes: volume.blockSizeBytes,
    state: 'queued',
    layers: [],
    bytesToShip: 0,
    bytesShipped: 0,
    blocksChanged: 0,
    createdAt: now,
    updatedAt: now,
    version: 0,
  };
  if (volume.owner !== undefined) record.owner = volume.owner;
  if (base) {
    record.base = base.backupId;
    record.baseSnapshotId = base.snapshotId;
    // The clone relation: the chain continues from another volume's backup.
    if (base.volumeId !== volumeId) record.parent = base.backupId;
  }
  await putNewBackup(record);
  await workQueue().send({ type: 'backup-volume', backupId });
  return { backupId, ...(base ? { base: base.backupId } : {}), state: 'queued' };
}

/** Every block listed between the base's snapshot and the backup's, as byte extents. */
async function changedExtents(r: BackupRecord): Promise<Array<{ offset: number; length: number }>> {
  const out: Array<{ offset: number; length: number }> = [];
  let next: string | undefined;
  do {
    const page = await changedBlocks(r.snapshotId, r.baseSnapshotId, '10000', next);
    out.push(...page.extents);
    next = page.next;
  } while (next !== undefined);
  return out;
}

/** Listed extents closer than this are read as one range (the blocks between are read, not shipped). */
const READ_GAP_BYTES = 1024 * 1024;

/**
 * The snapshot reads that cover the listed extents from `resumeAt` on, in order: each at most
 * READ_BYTES, nearby extents in one read (one snapshot read costs page-map requests whatever
 * its length), with the byte ranges wanted from it.
 */
export function readPlan(
  extents: ReadonlyArray<{ offset: number; length: number }>,
  resumeAt: number,
): Array<{ offset: number; length: number; wanted: Array<[number, number]> }> {
  const plan: Array<{ offset: number; length: number; wanted: Array<[number, number]> }> = [];
  for (const e of extents) {
    for (let from = Math.max(e.offset, resumeAt); from < e.offset + e.length; ) {
      const last = plan[plan.length - 1];
      const lastEnd = last ? last.offset + last.length : -Infinity;
      if (last && from - lastEnd <= READ_GAP_BYTES && from - last.offset < READ_BYTES) {
        // Extend the last read as far as READ_BYTES allows.
        const to = Math.min(e.offset + e.length, last.offset + READ_BYTES);
        last.length = to - last.offset;
        last.wanted.push([from, to]);
        from = to;
        continue;
      }
      const to = Math.min(e.offset + e.length, from + READ_BYTES);
      plan.push({ offset: from, length: to - from, wanted: [[from, to]] });
      from = to;
    }
  }
  return plan;
}

function isZero(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i += 8) if (buf.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

async function shipPack(backupId: string, seq: number, data: Buffer, extents: PackExtent[], crcs: number[], endByte: number): Promise<PackRecord> {
  const packId = packIdOf(backupId, seq);
  if (data.length > 0) {
    await vaultS3().send(
      new PutObjectCommand({
        Bucket: vaultConfig().bucket,
        Key: packKey(packId),
        Body: data,
        ContentLength: data.length,
        ContentType: 'application/octet-stream',
        // The vault recomputes it and refuses the PUT if the bytes it received differ.
        ChecksumCRC32C: crc32cBase64(crc32c(data)),
      }),
    );
  }
  const pack: PackRecord = { packId, backupId, seq, extents, crcs: Uint32Array.from(crcs), bytes: data.length, endByte };
  await putPack(pack); // false: a duplicate run put it first, with the same contents
  return pack;
}

/**
 * One `backup-volume` message (docs/backup.md, "The backup job"): resumes after the packs already
 * committed, ships up to PACKS_PER_MESSAGE more, and queues itself again or completes.
 */
export async function backupStep(backupId: string, receiveCount = 1): Promise<Record<string, unknown>> {
  try {
    const stored = await getBackup(backupId);
    if (!stored) return { backupId, skipped: 'no such backup' };
    if (stored.record.state !== 'queued' && stored.record.state !== 'running') return { backupId, skipped: `backup is ${stored.record.state}` };
    const out = await ship(backupId);
    // An earlier attempt may have left a job record at the primary; this one got through.
    if (receiveCount > 1) await forgetJobRecord(backupId).catch(() => undefined);
    return out;
  } catch (err) {
    // The snapshot went away at the primary: nothing will make this backup possible again.
    const permanent = err instanceof NotFoundError;
    const last = permanent || receiveCount >= LAST_RECEIVE;
    const reason = failureText(err);
    const error = permanent
      ? reason
      : last
        ? `${reason}; gave up after ${receiveCount} attempts`
        : `${reason} (attempt ${receiveCount} of ${LAST_RECEIVE}, retried)`;
    const recorded = await changeBackup(backupId, (r) => {
      if (r.state !== 'queued' && r.state !== 'running') return false;
      r.error = error;
      if (last) r.state = 'failed';
      return true;
    }).then(
      () => true,
      () => false,
    );
    // The vault did not take it: the primary keeps it, where GET /backups/{id} finds it.
    if (!recorded) await recordJobAtPrimary(backupId, last ? 'failed' : 'running', error, receiveCount).catch(() => undefined);
    if (permanent) return { backupId, failed: error };
    throw new BackupJobError(error, { cause: err });
  }
}

/** A backup attempt failed; the message says what failed and which attempt it was. */
export class BackupJobError extends Error {
  override name = 'BackupJobError';
}

async function ship(backupId: string): Promise<Record<string, unknown>> {
  const started = await changeBackup(backupId, (r) => {
    if (r.state !== 'queued') return false;
    r.state = 'running';
    r.startedAt = new Date().toISOString();
    return true;
  });
  if (!started || started.state !== 'running') return { backupId, skipped: `backup is ${started?.state ?? 'gone'}` };
  const extents = await changedExtents(started);
  const bytesToShip = extents.reduce((sum, e) => sum + e.length, 0);
  const bs = started.blockSizeBytes;
  if (started.bytesToShip !== bytesToShip) {
    await changeBackup(backupId, (r) => {
      if (r.bytesToShip === bytesToShip) return false;
      r.bytesToShip = bytesToShip;
      r.blocksChanged = bytesToShip / bs;
      return true;
    });
  }
  const committed = await listPacks(backupId);
  let seq = committed.length === 0 ? 0 : committed[committed.length - 1]!.seq + 1;
  const resumeAt = committed.length === 0 ? 0 : committed[committed.length - 1]!.endByte;
  let shippedBefore = committed.reduce((sum, p) => sum + packListedBytes(p, bs), 0);
  let packsThisRun = 0;
  const packBytes = vaultConfig().packBytes;
  const data = Buffer.allocUnsafe(packBytes);
  const resumedAtPack = seq;
  let used = 0;
  let packExtents: PackExtent[] = [];
  let crcs: number[] = [];
  const addExtent = (block: number, zero: boolean, offset: number) => {
    const last = packExtents[packExtents.length - 1];
    if (last && last[0] + last[1] === block && (zero ? last[2] === -1 : last[2] !== -1 && last[2] + last[1] * bs === offset)) last[1] += 1;
    else packExtents.push([block, 1, zero ? -1 : offset]);
  };
  const commit = async (endByte: number) => {
    const pack = await shipPack(backupId, seq, data.subarray(0, used), packExtents, crcs, endByte);
    shippedBefore += packListedBytes(pack, bs);
    const shipped = shippedBefore;
    await changeBackup(backupId, (r) => {
      if (r.bytesShipped >= shipped) return false;
      r.bytesShipped = shipped;
      return true;
    });
    seq++;
    packsThisRun++;
    used = 0;
    packExtents = [];
    crcs = [];
  };
  const plan = readPlan(extents, resumeAt);
  const reads: Array<Promise<Buffer>> = [];
  const startRead = (i: number) => {
    if (i >= plan.length || reads[i]) return;
    reads[i] = readSnapshotData(started.snapshotId, plan[i]!.offset, plan[i]!.length);
    reads[i]!.catch(() => undefined); // awaited below; a read left behind by an early return must not go unhandled
  };
  for (let i = 0; i < plan.length; i++) {
    for (let k = i; k < i + READ_AHEAD; k++) startRead(k);
    const { offset, wanted } = plan[i]!;
    const bytes = await reads[i]!;
    for (let w = 0; w < wanted.length; w++) {
      const [from, to] = wanted[w]!;
      for (let at = from; at < to; at += bs) {
        const j = at - offset;
        const block = at / bs;
        if (isZero(bytes, j, j + bs)) addExtent(block, true, 0);
        else {
          bytes.copy(data, used, j, j + bs);
          crcs.push(crc32c(bytes.subarray(j, j + bs)) >>> 0);
          addExtent(block, false, used);
          used += bs;
        }
        if (used < packBytes) continue;
        await commit(at + bs);
        const more = at + bs < to || w + 1 < wanted.length || i + 1 < plan.length;
        if (more && packsThisRun >= PACKS_PER_MESSAGE) {
          await workQueue().send({ type: 'backup-volume', backupId });
          return { backupId, resumedAtPack, packsShipped: packsThisRun, packs: seq, bytesShipped: shippedBefore, bytesToShip, continued: true };
        }
      }
    }
  }
  if (packExtents.length > 0) await commit(extents.length === 0 ? 0 : extents[extents.length - 1]!.offset + extents[extents.length - 1]!.length);
  const all = await listPacks(backupId);
  const done = await changeBackup(backupId, (r) => {
    if (r.state !== 'running') return false;
    r.layers = all.map((p) => p.packId);
    r.bytesShipped = r.bytesToShip;
    r.state = 'complete';
    r.completedAt = new Date().toISOString();
    delete r.error;
    return true;
  });
  return { backupId, resumedAtPack, packsShipped: packsThisRun, packs: all.length, bytesToShip, state: done?.state };
}

/** The listed bytes a pack accounts for (its data and its zero extents). */
function packListedBytes(p: PackRecord, bs: number): number {
  return p.extents.reduce((sum, [, count]) => sum + count * bs, 0);
}

/** What the API shows of a backup whose vault does not answer: this site's job record. */
export interface BackupJobView extends Omit<BackupJobRecord, 'recordedAt'> {
  updatedAt: string;
  vaultReachable: false;
}

export async function describeBackup(backupId: string): Promise<BackupView | BackupJobView> {
  const found = await readBackupOrJob(backupId);
  if (!found) throw new NotFoundError(`backup ${backupId} does not exist`);
  if ('job' in found) {
    const { recordedAt, ...job } = found.job;
    return { ...job, updatedAt: recordedAt, vaultReachable: false };
  }
  return backupView(found.record);
}

/**
 * `GET /backups`: one page of the backups in id order (by volume, oldest first within one), of
 * one volume with `volumeId`, a tenant's own with `owner`; paged as `GET /volumes` is (`limit`
 * 1 to 1000, default 100; `next` from the answer before, only ever a backup id of the list).
 */
export async function listBackupViews(
  volumeId: string | undefined,
  limitParam: string | undefined,
  next: string | undefined,
  owner: string | undefined,
): Promise<{ backups: BackupView[]; next?: string }> {
  const limit = pageLimit(limitParam);
  const list = volumeId === undefined ? 'backups' : `the backups of ${volumeId}`;
  const start = pageStart(next, list, (id) => (volumeId === undefined ? isBackupId(id) : isBackupOf(id, volumeId)));
  const page = await listBackupsPage(volumeId, start, limit, (b) => owner === undefined || b.owner === owner);
  const views = (await Promise.all(page.items.map(settleBackup))).map((b) => backupView(b));
  const fitted = fitPage(views, (v) => v.backupId, page.next);
  return fitted.next === undefined ? { backups: fitted.items } : { backups: fitted.items, next: fitted.next };
}
