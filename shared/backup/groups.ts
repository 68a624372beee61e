/**
 * Backing up a group snapshot and restoring it as a group (docs/consistency-groups.md, "Backing
 * up and restoring a group"): one ordinary backup per member, one ordinary restore per member
 * backup, and records that tie them together. States are derived from the member records.
 */
import { ConflictError, InvalidInputError, NotFoundError, SledgeError } from '../core/errors.ts';
import { vaultConfig } from '../core/vault-config.ts';
import { requireWholeGroupSnapshot } from '../control/group-snapshots.ts';
import { createGroup, newGroupId, requireGroup } from '../control/groups.ts';
import { newVolumeId } from '../control/volumes.ts';
import { groupStore, workQueue } from '../ports.ts';
import { beginBackup, checkBackupable } from './backup.ts';
import { getBackup, getRestore } from './catalog.ts';
import {
  changeGroupRestore,
  checkGroupBackupId,
  checkGroupRestoreId,
  deleteGroupBackupRecord,
  getGroupBackup,
  getGroupRestore,
  groupOfGroupBackup,
  isGroupBackupId,
  isGroupRestoreId,
  listGroupBackupsPage,
  listGroupRestoresPage,
  newGroupBackupId,
  newGroupRestoreId,
  putGroupBackup,
  putGroupRestore,
  type GroupBackupRecord,
  type GroupRestoreRecord,
} from './group-catalog.ts';
import { STALE_MS, deleteBackup } from './delete.ts';
import { fitPage, pageLimit, pageStart } from '../core/paging.ts';
import { settleBackup } from './job-records.ts';
import { newBackupId, newRestoreId, type BackupRecord } from './records.ts';
import { backupChain, beginRestore } from './restore.ts';

/** How long the group restore job waits before it looks at unfinished member restores again. */
const GROUP_RESTORE_RECHECK_SECONDS = 2;

function checkFields(body: Record<string, unknown>, allowed: string[], what: string): void {
  const extra = Object.keys(body).filter((k) => !allowed.includes(k));
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; ${what}`);
}

// ---------------------------------------------------------------------------------------
// Group backups

/** `POST /consistency-groups/{id}/snapshots/{gsid}/backups` (202): one backup per member, recorded together. */
export async function startGroupBackup(groupId: string, groupSnapshotId: string, body: Record<string, unknown>) {
  checkFields(body, [], 'a group backup takes no fields');
  const group = await requireGroup(groupId);
  const gs = await requireWholeGroupSnapshot(groupId, groupSnapshotId);
  for (const m of gs.members) await checkBackupable(m.volumeId, m.snapshotId);
  const record: GroupBackupRecord = {
    groupBackupId: newGroupBackupId(groupId),
    groupId,
    groupName: group.name,
    groupSnapshotId,
    members: gs.members.map((m) => ({ volumeId: m.volumeId, snapshotId: m.snapshotId, backupId: newBackupId(m.volumeId) })),
    createdAt: new Date().toISOString(),
  };
  if (group.owner !== undefined) record.owner = group.owner;
  // The record first: a member never started reads as a failed group backup, never a smaller one.
  await putGroupBackup(record);
  await Promise.all(record.members.map((m) => beginBackup(m.volumeId, m.snapshotId, m.backupId)));
  return { groupBackupId: record.groupBackupId, groupId, groupSnapshotId, state: 'queued', backups: record.members };
}

interface MemberBackupView {
  volumeId: string;
  snapshotId: string;
  backupId: string;
  state: string;
  bytesToShip: number;
  bytesShipped: number;
  error?: string;
}

export interface GroupBackupView extends Omit<GroupBackupRecord, 'members'> {
  state: 'queued' | 'running' | 'complete' | 'failed';
  error?: string;
  bytesToShip: number;
  bytesShipped: number;
  fractionDone: number;
  rateBytesPerSecond?: number;
  etaSeconds?: number;
  backups: MemberBackupView[];
}

/** Why a member backup keeps its group backup from being restorable, or null when it is complete or on its way. */
function memberProblem(m: GroupBackupRecord['members'][number], b: BackupRecord | null): string | null {
  if (!b) return `member backup ${m.backupId} of volume ${m.volumeId} has no record (it was never started, or it was deleted)`;
  if (b.state === 'failed') return `member backup ${m.backupId} of volume ${m.volumeId} failed: ${b.error ?? 'no reason recorded'}`;
  if (b.state === 'deleting') return `member backup ${m.backupId} of volume ${m.volumeId} is being deleted`;
  return null;
}

async function groupBackupState(g: GroupBackupRecord): Promise<{ view: GroupBackupView; records: Array<BackupRecord | null> }> {
  const records = await Promise.all(
    g.members.map(async (m) => {
      const stored = await getBackup(m.backupId);
      return stored ? settleBackup(stored.record) : null;
    }),
  );
  const problem = g.members.map((m, i) => memberProblem(m, records[i]!)).find((p) => p !== null);
  const present = records.filter((b): b is BackupRecord => b !== null);
  const state = problem
    ? 'failed'
    : present.every((b) => b.state === 'complete')
      ? 'complete'
      : present.some((b) => b.state !== 'queued')
        ? 'running'
        : 'queued';
  const bytesToShip = present.reduce((sum, b) => sum + b.bytesToShip, 0);
  const bytesShipped = present.reduce((sum, b) => sum + (b.state === 'complete' ? b.bytesToShip : b.bytesShipped), 0);
  const { members: _m, ...rest } = g;
  const view: GroupBackupView = {
    ...rest,
    state,
    ...(problem ? { error: problem } : {}),
    bytesToShip,
    bytesShipped,
    fractionDone: state === 'complete' ? 1 : bytesToShip === 0 ? 0 : bytesShipped / bytesToShip,
    backups: g.members.map((m, i) => {
      const b = records[i];
      const out: MemberBackupView = { ...m, state: b?.state ?? 'missing', bytesToShip: b?.bytesToShip ?? 0, bytesShipped: b?.bytesShipped ?? 0 };
      if (b?.error !== undefined) out.error = b.error;
      return out;
    }),
  };
  const started = present.map((b) => (b.startedAt ? Date.parse(b.startedAt) : NaN)).filter(Number.isFinite);
  if (state === 'running' && started.length > 0 && bytesShipped > 0) {
    const seconds = (Date.now() - Math.min(...started)) / 1000;
    if (seconds > 0) {
      view.rateBytesPerSecond = Math.round(bytesShipped / seconds);
      view.etaSeconds = Math.round(Math.max(0, bytesToShip - bytesShipped) / view.rateBytesPerSecond);
    }
  }
  return { view, records };
}

async function requireGroupBackup(groupBackupId: string): Promise<GroupBackupRecord> {
  const g = await getGroupBackup(checkGroupBackupId(groupBackupId));
  if (!g) throw new NotFoundError(`group backup ${groupBackupId} does not exist`);
  return g;
}

export async function describeGroupBackup(groupBackupId: string): Promise<GroupBackupView> {
  return (await groupBackupState(await requireGroupBackup(groupBackupId))).view;
}

/** The owner of a group backup for the router's access check (null: it does not exist). */
export async function groupBackupOwner(groupBackupId: string): Promise<string | undefined | null> {
  try {
    checkGroupBackupId(groupBackupId);
  } catch {
    return null;
  }
  const g = await getGroupBackup(groupBackupId);
  return g ? g.owner : null;
}

/**
 * `GET /group-backups`: one page of the group backups in id order (by group, oldest first within
 * one), of one group with `groupId`, a tenant's own with `owner`; paged as `GET /volumes` is
 * (`limit` 1 to 1000, default 100; `next` from the answer before, only ever a group backup id of the list).
 */
export async function listGroupBackupViews(
  groupId: string | undefined,
  limitParam: string | undefined,
  next: string | undefined,
  owner: string | undefined,
): Promise<{ groupBackups: GroupBackupView[]; next?: string }> {
  const limit = pageLimit(limitParam);
  const list = groupId === undefined ? 'group backups' : `the group backups of ${groupId}`;
  const start = pageStart(next, list, (id) => isGroupBackupId(id) && (groupId === undefined || groupOfGroupBackup(id) === groupId));
  const page = await listGroupBackupsPage(groupId, start, limit, (g) => owner === undefined || g.owner === owner);
  const views = await Promise.all(page.items.map(async (g) => (await groupBackupState(g)).view));
  const fitted = fitPage(views, (v) => v.groupBackupId, page.next);
  return fitted.next === undefined ? { groupBackups: fitted.items } : { groupBackups: fitted.items, next: fitted.next };
}

/**
 * `DELETE /group-backups/{id}` (202): every member backup is deleted as `DELETE /backups/{id}`
 * does, then the record. 409, nothing deleted, while a member backup runs or a restore holds one
 * (checked first; a member that starts being restored after the check answers 409 with the
 * members before it deleted: the group backup then reads `failed`, and a repeat finishes).
 */
export async function deleteGroupBackup(groupBackupId: string): Promise<{ groupBackupId: string; deleting: string[] }> {
  const g = await requireGroupBackup(groupBackupId);
  const stored = await Promise.all(g.members.map((m) => getBackup(m.backupId)));
  const present = stored.filter((b): b is NonNullable<typeof b> => b !== null && b.record.state !== 'deleting');
  for (const b of present) {
    const r = await settleBackup(b.record);
    if (r.state !== 'complete' && r.state !== 'failed')
      throw new ConflictError(`member backup ${r.backupId} is ${r.state}; delete the group backup once it has ended`);
    if (b.restoring.length > 0)
      throw new ConflictError(`member backup ${r.backupId} is being restored by ${b.restoring[0]}; delete the group backup once the restore has ended`);
  }
  for (const b of present) await deleteBackup(b.record.backupId);
  await deleteGroupBackupRecord(groupBackupId);
  return { groupBackupId, deleting: present.map((b) => b.record.backupId) };
}

// ---------------------------------------------------------------------------------------
// Group restores

/** `POST /group-restores { groupBackupId, groupName? }` (202): one restore per member backup, and the group made once all are done. */
export async function startGroupRestore(body: Record<string, unknown>, owner: string | undefined) {
  checkFields(body, ['groupBackupId', 'groupName'], 'a group restore takes groupBackupId and groupName');
  const { groupBackupId, groupName } = body;
  if (typeof groupBackupId !== 'string' || groupBackupId.length === 0 || groupBackupId.length > 80)
    throw new InvalidInputError('groupBackupId must be a group backup id');
  if (groupName !== undefined && (typeof groupName !== 'string' || groupName.length === 0 || groupName.length > 128)) {
    throw new InvalidInputError('groupName must be a string of 1 to 128 characters');
  }
  const g = await requireGroupBackup(groupBackupId);
  const { view, records } = await groupBackupState(g);
  if (view.state !== 'complete') {
    throw new ConflictError(
      `group backup ${groupBackupId} is ${view.state}${view.error ? ` (${view.error})` : ''}: only a complete group backup can be restored`,
    );
  }
  const backups = records as BackupRecord[];
  for (const b of backups) await backupChain(b); // 409 if a backup a member continues is not complete
  const now = new Date().toISOString();
  const record: GroupRestoreRecord = {
    groupRestoreId: newGroupRestoreId(),
    groupBackupId,
    site: vaultConfig().site,
    members: g.members.map((m) => ({ sourceVolumeId: m.volumeId, backupId: m.backupId, restoreId: newRestoreId(), volumeId: newVolumeId() })),
    createdAt: now,
    updatedAt: now,
    version: 0,
  };
  if (owner !== undefined) record.owner = owner;
  if (typeof groupName === 'string') {
    record.groupName = groupName;
    record.groupId = newGroupId();
  }
  // The record first: a member restore never started reads as a failed group restore.
  await putGroupRestore(record);
  await Promise.all(record.members.map((m, i) => beginRestore(backups[i]!, backups[i]!.sizeBytes, owner, { restoreId: m.restoreId, volumeId: m.volumeId })));
  await workQueue().send({ type: 'group-restore', groupRestoreId: record.groupRestoreId });
  return { groupRestoreId: record.groupRestoreId, groupBackupId, ...(record.groupId ? { groupId: record.groupId } : {}), restores: record.members };
}

export interface GroupRestoreView extends Omit<GroupRestoreRecord, 'version' | 'members' | 'groupMade'> {
  state: 'running' | 'complete' | 'failed';
  bytesToRestore: number;
  bytesRestored: number;
  fractionDone: number;
  restores: Array<GroupRestoreRecord['members'][number] & { state: string; bytesToRestore: number; bytesRestored: number; error?: string }>;
}

async function groupRestoreState(g: GroupRestoreRecord): Promise<GroupRestoreView> {
  const restores = await Promise.all(g.members.map((m) => getRestore(m.restoreId)));
  const missing = g.members.find((_, i) => !restores[i]);
  const failed = g.members.find((_, i) => restores[i]?.state === 'failed');
  const error =
    g.error ??
    (missing
      ? `member restore ${missing.restoreId} has no record (it was never started)`
      : failed
        ? `member restore ${failed.restoreId} of backup ${failed.backupId} failed: ${restores[g.members.indexOf(failed)]!.error ?? 'no reason recorded'}`
        : undefined);
  const allComplete = restores.every((r) => r?.state === 'complete');
  const state = error ? 'failed' : allComplete && (g.groupName === undefined || g.groupMade) ? 'complete' : 'running';
  const bytesToRestore = restores.reduce((sum, r) => sum + (r?.bytesToRestore ?? 0), 0);
  const bytesRestored = restores.reduce((sum, r) => sum + (r?.bytesRestored ?? 0), 0);
  const { version: _v, members, groupMade: _made, groupId, ...rest } = g;
  return {
    ...rest,
    // The group is named only once it exists.
    ...(groupId !== undefined && g.groupMade ? { groupId } : {}),
    state,
    ...(error ? { error } : {}),
    bytesToRestore,
    bytesRestored,
    fractionDone: state === 'complete' ? 1 : bytesToRestore === 0 ? 0 : bytesRestored / bytesToRestore,
    restores: members.map((m, i) => {
      const r = restores[i];
      return {
        ...m,
        state: r?.state ?? 'missing',
        bytesToRestore: r?.bytesToRestore ?? 0,
        bytesRestored: r?.bytesRestored ?? 0,
        ...(r?.error ? { error: r.error } : {}),
      };
    }),
  };
}

export async function describeGroupRestore(groupRestoreId: string): Promise<GroupRestoreView> {
  const g = await getGroupRestore(checkGroupRestoreId(groupRestoreId));
  if (!g) throw new NotFoundError(`group restore ${groupRestoreId} does not exist`);
  return groupRestoreState(g);
}

/**
 * `GET /group-restores`: one page of the group restores in the vault (a tenant's own only, when
 * `owner` is given), oldest first, each with its members' states as `GET /group-restores/{id}`
 * gives them; with `groupBackupId` only those of that group backup. Paged as `GET /volumes` is
 * (`limit` 1 to 1000, default 100; `next` from the answer before, only ever a group restore id).
 */
export async function listGroupRestoreViews(
  groupBackupId: string | undefined,
  limitParam: string | undefined,
  next: string | undefined,
  owner: string | undefined,
): Promise<{ groupRestores: GroupRestoreView[]; next?: string }> {
  const limit = pageLimit(limitParam);
  const start = pageStart(next, 'group restores', isGroupRestoreId);
  const page = await listGroupRestoresPage(
    start,
    limit,
    (g) => (owner === undefined || g.owner === owner) && (groupBackupId === undefined || g.groupBackupId === groupBackupId),
  );
  const fitted = fitPage(await Promise.all(page.items.map(groupRestoreState)), (v) => v.groupRestoreId, page.next);
  return fitted.next === undefined ? { groupRestores: fitted.items } : { groupRestores: fitted.items, next: fitted.next };
}

export async function groupRestoreOwner(groupRestoreId: string): Promise<string | undefined | null> {
  try {
    checkGroupRestoreId(groupRestoreId);
  } catch {
    return null;
  }
  const g = await getGroupRestore(groupRestoreId);
  return g ? g.owner : null;
}

/** One `group-restore` message: waits for the member restores (queueing itself again), then makes the group. */
export async function groupRestoreStep(groupRestoreId: string): Promise<Record<string, unknown>> {
  const g = await getGroupRestore(groupRestoreId);
  if (!g) return { groupRestoreId, skipped: 'no such group restore' };
  const view = await groupRestoreState(g);
  if (view.state !== 'running') return { groupRestoreId, state: view.state };
  if (view.restores.some((r) => r.state !== 'complete')) {
    // A member restore that stopped moving (its messages dead-lettered unrecorded) ends the wait.
    const unfinished = await Promise.all(view.restores.filter((r) => r.state !== 'complete').map((r) => getRestore(r.restoreId)));
    const lastMoveMs = Math.max(...unfinished.map((r) => (r ? Date.parse(r.updatedAt) : 0)));
    if (Date.now() - lastMoveMs > STALE_MS) {
      await changeGroupRestore(groupRestoreId, (x) => {
        x.error = `member restores stopped: none has moved for ${STALE_MS / 60_000} minutes`;
        return true;
      });
      return { groupRestoreId, failed: 'member restores stopped' };
    }
    await workQueue().send({ type: 'group-restore', groupRestoreId }, { delaySeconds: GROUP_RESTORE_RECHECK_SECONDS });
    return { groupRestoreId, waiting: view.restores.filter((r) => r.state !== 'complete').length };
  }
  // Every member restore is complete: the group, with the id chosen at the start (a rerun finds it made).
  const groupId = g.groupId!;
  if (!(await groupStore().getGroup(groupId))) {
    try {
      await createGroup({ name: g.groupName!, volumeIds: g.members.map((m) => m.volumeId) }, g.owner, { groupId });
    } catch (err) {
      if (await groupStore().getGroup(groupId)) {
        // a duplicate run made it first
      } else if (err instanceof SledgeError && err.status < 500) {
        await changeGroupRestore(groupRestoreId, (x) => {
          x.error = `the consistency group could not be made: ${err.message}`;
          return true;
        });
        return { groupRestoreId, failed: err.message };
      } else throw err;
    }
  }
  await changeGroupRestore(groupRestoreId, (x) => {
    if (x.groupMade) return false;
    x.groupMade = true;
    return true;
  });
  return { groupRestoreId, state: 'complete', groupId };
}
