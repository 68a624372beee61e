/**
 * Restores (docs/backup.md, "Restore"): a new volume at this site whose bytes are the backed-up
 * snapshot's, written through the normal commit path; a clone's backup is restored as a clone
 * of its parent's restore, so that the two share the parent's blocks here as at the primary.
 */
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { ConflictError, InvalidInputError, NotFoundError } from '../core/errors.ts';
import { vaultConfig } from '../core/vault-config.ts';
import { vaultS3 } from '../aws/vault-clients.ts';
import { crc32c } from '../data/crc32c.ts';
import { completeWrite, prepareWrite, type WritePiece } from '../data/write.ts';
import { MAX_PAGES_PER_COMMIT } from '../core/records.ts';
import type { WorkMessage } from '../core/work-messages.ts';
import { createSnapshot } from '../control/snapshots.ts';
import { createVolume, newVolumeId } from '../control/volumes.ts';
import { pageMap, workQueue } from '../ports.ts';
import { changeRestore, claimSiteRestore, getBackup, getPacks, getRestore, holdBackup, listRestoresPage, putNewRestore, releaseBackup } from './catalog.ts';
import { fitPage, pageLimit, pageStart } from '../core/paging.ts';
import { checkBackupId, isRestoreId, newRestoreId, packKey, type BackupRecord, type PackRecord, type RestoreRecord } from './records.ts';
import { LAST_RECEIVE } from './backup.ts';

/** Bytes per restore commit (the write path's limit). */
const COMMIT_BYTES = 4 * 1024 * 1024;
/** Pages per restore commit: below the commit's limit. */
const COMMIT_PAGES = Math.min(64, MAX_PAGES_PER_COMMIT);
const COMMIT_ATTEMPTS = 8;
/** Commits whose pack bytes are fetched ahead of the one committing. */
const FETCH_AHEAD = 3;

/** Where a block's bytes are in the vault: a pack and offset (and CRC), or zeros. */
export type BlockSource = { packId: string; offset: number; crc: number } | null;

/** A backup's chain, newest first, and the nearest ancestor of another volume (the clone relation). */
export async function backupChain(b: BackupRecord): Promise<{ own: BackupRecord[]; crossing?: BackupRecord }> {
  const own: BackupRecord[] = [b];
  let cursor = b;
  for (let depth = 0; cursor.base && depth < 10_000; depth++) {
    const base = (await getBackup(cursor.base))?.record;
    if (!base || base.state !== 'complete') throw new ConflictError(`backup ${b.backupId} continues ${cursor.base}, which is ${base ? base.state : 'gone'}`);
    if (base.volumeId !== b.volumeId) return { own, crossing: base };
    own.push(base);
    cursor = base;
  }
  return { own };
}

/** The block map of `backups` (newest first): later packs' entries replace earlier ones. */
export async function blockMap(backups: readonly BackupRecord[], bs: number): Promise<{ map: Map<number, BlockSource>; packs: Map<string, PackRecord> }> {
  const layers = [...backups].reverse().flatMap((b) => b.layers);
  const packs = await getPacks(layers);
  const map = new Map<number, BlockSource>();
  for (const packId of layers) {
    const p = packs.get(packId);
    if (!p) throw new ConflictError(`pack ${packId} of the backup chain is missing from the vault`);
    for (const [first, count, offset] of p.extents) {
      for (let i = 0; i < count; i++) {
        if (offset === -1) map.set(first + i, null);
        else {
          const at = offset + i * bs;
          map.set(first + i, { packId, offset: at, crc: p.crcs[at / bs]! });
        }
      }
    }
  }
  return { map, packs };
}

/** Reads `count` blocks of a pack from `offset` and checks each one's CRC-32C. */
export async function readPackBlocks(packId: string, offset: number, count: number, bs: number, crcs: readonly number[]): Promise<Buffer> {
  const bytes = await readPackRange(packId, offset, count * bs);
  checkBlocks(packId, offset, bytes, crcs, bs);
  return bytes;
}

/** Runs of one pack closer than this in the pack are read with one ranged GET (the bytes between are read and dropped). */
const GET_GAP_BYTES = 256 * 1024;

/**
 * The write pieces of a commit's runs: the runs of one pack that lie near each other in it are
 * fetched with one ranged GET, and every block is checked against its CRC-32C.
 */
async function fetchRuns(runs: PlannedCommit['runs'], packs: ReadonlyMap<string, PackRecord>, bs: number): Promise<WritePiece[]> {
  // Groups of runs, each group one GET: same pack, ascending offsets, small gaps.
  const groups: Array<{ packId: string; from: number; to: number; members: number[] }> = [];
  const order = runs.map((_, i) => i).filter((i) => runs[i]!.src !== null);
  order.sort((a, b) => {
    const x = runs[a]!.src!;
    const y = runs[b]!.src!;
    return x.packId === y.packId ? x.offset - y.offset : x.packId < y.packId ? -1 : 1;
  });
  for (const i of order) {
    const { count, src } = runs[i]!;
    const last = groups[groups.length - 1];
    const end = src!.offset + count * bs;
    if (last && last.packId === src!.packId && src!.offset - last.to <= GET_GAP_BYTES) {
      last.to = Math.max(last.to, end);
      last.members.push(i);
    } else groups.push({ packId: src!.packId, from: src!.offset, to: end, members: [i] });
  }
  const pieces: WritePiece[] = runs.map(({ block, count }) => ({ offset: block * bs, length: count * bs }));
  await Promise.all(
    groups.map(async (g) => {
      const p = packs.get(g.packId)!;
      const crcs = Array.from({ length: (g.to - g.from) / bs }, (_, x) => p.crcs[g.from / bs + x]!);
      const bytes = await readPackRange(g.packId, g.from, g.to - g.from);
      for (const i of g.members) {
        const { count, src } = runs[i]!;
        const at = src!.offset - g.from;
        const data = bytes.subarray(at, at + count * bs);
        checkBlocks(g.packId, src!.offset, data, crcs.slice(at / bs, at / bs + count), bs);
        pieces[i]!.data = data;
      }
    }),
  );
  return pieces;
}

async function readPackRange(packId: string, offset: number, length: number): Promise<Buffer> {
  const out = await vaultS3().send(
    new GetObjectCommand({ Bucket: vaultConfig().bucket, Key: packKey(packId), Range: `bytes=${offset}-${offset + length - 1}` }),
  );
  const bytes = Buffer.from(await out.Body!.transformToByteArray());
  if (bytes.length !== length) throw new BadBlockError(`pack ${packId} returned ${bytes.length} bytes at ${offset}, expected ${length}`);
  return bytes;
}

function checkBlocks(packId: string, offset: number, bytes: Buffer, crcs: readonly number[], bs: number): void {
  for (let i = 0; i < bytes.length / bs; i++) {
    const actual = crc32c(bytes.subarray(i * bs, (i + 1) * bs)) >>> 0;
    if (actual !== crcs[i]) throw new BadBlockError(`pack ${packId} block at byte ${offset + i * bs} has CRC-32C ${actual}, its manifest says ${crcs[i]}`);
  }
}

export class BadBlockError extends Error {
  override name = 'BadBlockError';
}

/** `POST /restores { backupId, sizeBytes? }` (202). */
export async function startRestore(body: unknown, owner: string | undefined): Promise<{ restoreId: string; volumeId: string }> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidInputError('the body must be a JSON object with backupId');
  const extra = Object.keys(body).filter((k) => k !== 'backupId' && k !== 'sizeBytes');
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; a restore takes backupId and sizeBytes`);
  const { backupId, sizeBytes } = body as { backupId?: unknown; sizeBytes?: unknown };
  if (typeof backupId !== 'string' || backupId.length === 0 || backupId.length > 64) throw new InvalidInputError('backupId must be a backup id');
  const b = (await getBackup(checkBackupId(backupId)))?.record;
  if (!b) throw new NotFoundError(`backup ${backupId} does not exist`);
  if (b.state !== 'complete')
    throw new ConflictError(`backup ${backupId} is ${b.state}${b.error ? ` (${b.error})` : ''}: only a complete backup can be restored`);
  await backupChain(b); // 409 if any backup it continues is not complete
  let size = b.sizeBytes;
  if (sizeBytes !== undefined) {
    if (!Number.isSafeInteger(sizeBytes)) throw new InvalidInputError('sizeBytes must be an integer');
    if ((sizeBytes as number) < b.sizeBytes) throw new InvalidInputError(`sizeBytes ${sizeBytes} is below the backup's ${b.sizeBytes}`);
    if ((sizeBytes as number) % b.blockSizeBytes !== 0) throw new InvalidInputError(`sizeBytes must be a multiple of the block size ${b.blockSizeBytes}`);
    size = sizeBytes as number;
  }
  return beginRestore(b, size, owner);
}

/** Holds a complete backup for a new restore (ids chosen by the caller or now), records the restore and queues its job. */
export async function beginRestore(
  b: BackupRecord,
  size: number,
  owner: string | undefined,
  ids: { restoreId?: string; volumeId?: string } = {},
): Promise<{ restoreId: string; volumeId: string }> {
  const backupId = b.backupId;
  const restore = newRestoreRecord(b, size, owner, ids.restoreId);
  if (ids.volumeId !== undefined) restore.volumeId = ids.volumeId;
  // Held before the record exists: a delete that finds a hold without a record releases it.
  if (!(await holdBackup(b.backupId, restore.restoreId))) throw new ConflictError(`backup ${backupId} is being deleted; it cannot be restored`);
  await putNewRestore(restore);
  await workQueue().send({ type: 'restore-volume', restoreId: restore.restoreId });
  return { restoreId: restore.restoreId, volumeId: restore.volumeId };
}

function newRestoreRecord(b: BackupRecord, sizeBytes: number, owner: string | undefined, restoreId = newRestoreId()): RestoreRecord {
  const now = new Date().toISOString();
  const r: RestoreRecord = {
    restoreId,
    backupId: b.backupId,
    site: vaultConfig().site,
    volumeId: newVolumeId(),
    sizeBytes,
    state: 'queued',
    bytesToRestore: 0,
    bytesRestored: 0,
    nextBlock: 0,
    createdAt: now,
    updatedAt: now,
    version: 0,
  };
  if (owner !== undefined) r.owner = owner;
  return r;
}

/**
 * What one message may still write, and the message that carries the restore on once it has
 * (the top-level restore's own: a clone's parent is restored under its clone's messages).
 */
interface MessageBudget {
  bytesLeft: number;
  continuation: WorkMessage;
}

/**
 * One `restore-volume` message: resumes where the last run stopped and writes up to the
 * configured bytes per message, then queues the next message, or completes the restore.
 */
export async function restoreStep(restoreId: string, receiveCount = 1): Promise<Record<string, unknown>> {
  const r = await getRestore(restoreId);
  if (!r) return { restoreId, skipped: 'no such restore' };
  if (r.state === 'complete' || r.state === 'failed') return { restoreId, skipped: `restore is ${r.state}` };
  try {
    const budget: MessageBudget = { bytesLeft: vaultConfig().restoreBytesPerMessage, continuation: { type: 'restore-volume', restoreId } };
    return await runRestore(r, receiveCount, budget);
  } catch (err) {
    const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    const permanent = err instanceof BadBlockError || err instanceof ConflictError || err instanceof NotFoundError;
    const last = permanent || receiveCount >= LAST_RECEIVE;
    await changeRestore(restoreId, (x) => {
      if (x.state === 'complete' || x.state === 'failed') return false;
      x.error = last ? message : `${message} (attempt ${receiveCount}, retried)`;
      if (last) x.state = 'failed';
      return true;
    }).catch(() => undefined);
    // An ended restore lets its backup go (a delete also removes holds of ended restores).
    if (last) await releaseBackup(r.backupId, restoreId).catch(() => undefined);
    if (permanent) return { restoreId, failed: message };
    throw err;
  }
}

/**
 * The restore of `crossing` at this site (made and run here if none is), complete, with its
 * snapshot; null when this message's budget ran out first (the continuation is queued).
 */
async function parentRestore(r: RestoreRecord, crossing: BackupRecord, receiveCount: number, budget: MessageBudget): Promise<RestoreRecord | null> {
  const proposed = newRestoreRecord(crossing, crossing.sizeBytes, r.owner);
  const claimant = await claimSiteRestore(r.site, crossing.backupId, proposed.restoreId);
  let parent = await getRestore(claimant);
  if (!parent) {
    await putNewRestore({ ...proposed, restoreId: claimant }).catch((err: unknown) => {
      if ((err as Error).name !== 'ConditionalCheckFailedException') throw err;
    });
    parent = (await getRestore(claimant))!;
  }
  if (parent.state !== 'complete') {
    if (!(await holdBackup(crossing.backupId, claimant))) throw new ConflictError(`parent backup ${crossing.backupId} is being deleted; it cannot be restored`);
    if ((await runRestore(parent, receiveCount, budget)).continued) return null;
  }
  parent = (await getRestore(claimant))!;
  if (parent.state !== 'complete' || !parent.snapshotId)
    throw new ConflictError(`the restore ${claimant} of parent backup ${crossing.backupId} is ${parent.state}`);
  return parent;
}

async function runRestore(initial: RestoreRecord, receiveCount: number, budget: MessageBudget): Promise<Record<string, unknown>> {
  const restoreId = initial.restoreId;
  const b = (await getBackup(initial.backupId))?.record;
  if (!b || b.state !== 'complete') throw new ConflictError(`backup ${initial.backupId} is ${b?.state ?? 'gone'}; it cannot be restored`);
  const { own, crossing } = await backupChain(b);
  const parent = crossing ? await parentRestore(initial, crossing, receiveCount, budget) : undefined;
  if (parent === null) return { restoreId, continued: true, waitingFor: 'the restore of its parent' };
  const bs = b.blockSizeBytes;
  const { map, packs } = await blockMap(own, bs);
  const blocks = [...map.keys()].filter((block) => block * bs < b.sizeBytes).sort((x, y) => x - y);
  let r =
    (await changeRestore(restoreId, (x) => {
      if (x.state !== 'queued' && x.bytesToRestore === blocks.length * bs && x.parentRestoreId === parent?.restoreId) return false;
      x.state = 'running';
      x.startedAt ??= new Date().toISOString();
      x.bytesToRestore = blocks.length * bs;
      if (parent) x.parentRestoreId = parent.restoreId;
      return true;
    })) ?? initial;
  // The volume: created once (its id is fixed), a clone of the parent's restore for a clone.
  if (!(await pageMap().getVolume(r.volumeId))) {
    const input = parent ? { sourceSnapshotId: parent.snapshotId, sizeBytes: r.sizeBytes } : { sizeBytes: r.sizeBytes, blockSizeBytes: bs };
    await createVolume(input, r.owner, { volumeId: r.volumeId }).catch(async (err: unknown) => {
      if (!(await pageMap().getVolume(r.volumeId))) throw err; // not a duplicate run that made it first
    });
  }
  // Zeros need writing only over a parent's blocks; a new volume reads zeros already.
  const todo = blocks.filter((block) => block >= r.nextBlock && (parent !== undefined || map.get(block) !== null));
  let restored = r.bytesRestored;
  const resumedAtBlock = r.nextBlock;
  const { pageBlocks } = (await pageMap().getVolume(r.volumeId))!;
  const commits = commitPlan(todo, map, bs, pageBlocks);
  // The packs' bytes for the next commits are fetched while one commits.
  const fetches: Array<Promise<WritePiece[]>> = [];
  const fetchCommit = (k: number) => {
    if (k >= commits.length || fetches[k]) return;
    fetches[k] = fetchRuns(commits[k]!.runs, packs, bs);
    fetches[k]!.catch(() => undefined); // awaited in order below
  };
  for (let k = 0; k < commits.length; k++) {
    if (budget.bytesLeft <= 0) {
      // This message has written its share: the next one resumes from nextBlock.
      await workQueue().send(budget.continuation);
      return { restoreId, volumeId: r.volumeId, resumedAtBlock, continued: true, nextBlock: r.nextBlock, bytesRestored: restored };
    }
    for (let ahead = k; ahead < k + FETCH_AHEAD; ahead++) fetchCommit(ahead);
    await commitPieces(r.volumeId, await fetches[k]!);
    delete fetches[k];
    restored += commits[k]!.bytes;
    budget.bytesLeft -= commits[k]!.bytes;
    const nextBlock = commits[k]!.nextBlock;
    const bytesRestored = restored;
    r = (await changeRestore(restoreId, (x) => {
      if (x.nextBlock >= nextBlock) return false;
      x.nextBlock = nextBlock;
      x.bytesRestored = Math.max(x.bytesRestored, bytesRestored);
      return true;
    }))!;
  }
  // A snapshot of what was restored: clones restored here later are made from it.
  const snap = r.snapshotId ? undefined : await createSnapshot(r.volumeId, { name: `restore of ${b.backupId}` }, { id: 'restore' });
  const done = await changeRestore(restoreId, (x) => {
    if (x.state === 'complete') return false;
    x.snapshotId ??= snap?.snapshotId;
    x.bytesRestored = x.bytesToRestore;
    x.state = 'complete';
    x.completedAt = new Date().toISOString();
    delete x.error;
    return true;
  });
  await claimSiteRestore(r.site, b.backupId, restoreId);
  await releaseBackup(b.backupId, restoreId);
  return {
    restoreId,
    volumeId: r.volumeId,
    resumedAtBlock,
    state: done?.state,
    bytesRestored: done?.bytesRestored,
    ...(parent ? { parentRestoreId: parent.restoreId } : {}),
  };
}

/** One restore commit: runs of blocks (from one pack at consecutive offsets, or zeros), up to COMMIT_BYTES and COMMIT_PAGES pages. */
interface PlannedCommit {
  runs: Array<{ block: number; count: number; src: BlockSource }>;
  bytes: number;
  /** The restore's `nextBlock` once this commit is in. */
  nextBlock: number;
}

/** The commits that write `todo` (ascending blocks) from the block map. */
export function commitPlan(todo: readonly number[], map: ReadonlyMap<number, BlockSource>, bs: number, pageBlocks: number): PlannedCommit[] {
  const out: PlannedCommit[] = [];
  for (let i = 0; i < todo.length; ) {
    const runs: PlannedCommit['runs'] = [];
    const pages = new Set<number>();
    let bytes = 0;
    let j = i;
    while (j < todo.length && bytes < COMMIT_BYTES) {
      const block = todo[j]!;
      const page = Math.floor(block / pageBlocks);
      if (!pages.has(page) && pages.size >= COMMIT_PAGES) break;
      pages.add(page);
      const src = map.get(block)!;
      let n = 1;
      while (j + n < todo.length && todo[j + n] === block + n && bytes + (n + 1) * bs <= COMMIT_BYTES && Math.floor((block + n) / pageBlocks) === page) {
        const next = map.get(block + n)!;
        if (src === null ? next !== null : next === null || next.packId !== src.packId || next.offset !== src.offset + n * bs) break;
        n++;
      }
      runs.push({ block, count: n, src });
      bytes += n * bs;
      j += n;
    }
    out.push({ runs, bytes, nextBlock: todo[j - 1]! + 1 });
    i = j;
  }
  return out;
}

/** Commits `pieces` as a maintenance write (fenced on the reservation generation), reading the volume again when the head moved. */
async function commitPieces(volumeId: string, pieces: WritePiece[]): Promise<void> {
  for (let attempt = 0; attempt < COMMIT_ATTEMPTS; attempt++) {
    const v = await pageMap().getVolume(volumeId);
    if (!v || v.state !== 'active') throw new NotFoundError(`restored volume ${volumeId} was deleted`);
    const prepared = await prepareWrite(v, pieces, { id: 'restore' }, { maintenance: true });
    if (await completeWrite(prepared, { maintenanceAtGeneration: v.reservations.generation })) return;
  }
  throw new Error(`restore into ${volumeId} lost the commit race ${COMMIT_ATTEMPTS} times; the message is retried`);
}

export interface RestoreView extends Omit<RestoreRecord, 'version'> {
  fractionDone: number;
  rateBytesPerSecond?: number;
  etaSeconds?: number;
}

export async function describeRestore(restoreId: string): Promise<RestoreView> {
  const r = await getRestore(restoreId);
  if (!r) throw new NotFoundError(`restore ${restoreId} does not exist`);
  return restoreView(r);
}

/**
 * `GET /restores`: one page of the restores in the vault (a tenant's own only, when `owner` is
 * given), oldest first; with `volumeId` only those making that volume, with `backupId` only those
 * of that backup. Paged as `GET /volumes` is (`limit` 1 to 1000, default 100; `next` from the
 * answer before, only ever a restore id).
 */
export async function listRestoreViews(
  filter: { volumeId?: string; backupId?: string },
  limitParam: string | undefined,
  next: string | undefined,
  owner: string | undefined,
): Promise<{ restores: RestoreView[]; next?: string }> {
  const limit = pageLimit(limitParam);
  const start = pageStart(next, 'restores', isRestoreId);
  const page = await listRestoresPage(
    start,
    limit,
    (r) =>
      (owner === undefined || r.owner === owner) &&
      (filter.volumeId === undefined || r.volumeId === filter.volumeId) &&
      (filter.backupId === undefined || r.backupId === filter.backupId),
  );
  const fitted = fitPage(page.items.map(restoreView), (v) => v.restoreId, page.next);
  return fitted.next === undefined ? { restores: fitted.items } : { restores: fitted.items, next: fitted.next };
}

function restoreView(r: RestoreRecord): RestoreView {
  const { version: _v, ...rest } = r;
  const out: RestoreView = { ...rest, fractionDone: r.state === 'complete' ? 1 : r.bytesToRestore === 0 ? 0 : r.bytesRestored / r.bytesToRestore };
  if (r.state === 'running' && r.startedAt && r.bytesRestored > 0) {
    const seconds = (Date.now() - Date.parse(r.startedAt)) / 1000;
    if (seconds > 0) {
      out.rateBytesPerSecond = Math.round(r.bytesRestored / seconds);
      out.etaSeconds = Math.round((r.bytesToRestore - r.bytesRestored) / out.rateBytesPerSecond);
    }
  }
  return out;
}
