/**
 * The volume API: routes to domain functions. See shared/api/openapi.json.
 *
 * Each route says who may call it (shared/api/authz.ts, docs/security.md): `OPERATOR`,
 * `ANY_PRINCIPAL`, or the owner of the volume in its path (`VOLUME_OWNER`, and `VOLUME_DATA`
 * for the data path, which is not audited per request). The router checks it before the handler
 * runs; a route registered without a rule gets the owner rule when its path has `{volumeId}`,
 * and is for operators otherwise.
 */
import { decodeBatch, BATCH_CONTENT_TYPE, MAX_BATCH_HEADER_BYTES } from './batch.ts';
import { sendCheckpointMessage } from '../maintenance/checkpoint-messages.ts';
import { listCheckpoints, parseMode, takeCheckpoint } from '../maintenance/checkpoints/take.ts';
import { rebuildPageMap } from '../maintenance/checkpoints/rebuild.ts';
import { config } from '../core/config.ts';
import { ConflictError, InvalidInputError, NotFoundError, PayloadTooLargeError, UnsupportedMediaTypeError } from '../core/errors.ts';
import { Router, intQuery, jsonBody, optionalJsonBody, type Request } from './http.ts';
import { ANY_PRINCIPAL, OPERATOR, VOLUME_DATA, VOLUME_OWNER, owned, ownerFilter } from './authz.ts';
import { snapshotVolume } from '../data/views.ts';
import { pageMap } from '../ports.ts';
import { describeHeads, designateHeads, failHead, forcedFailure, joinAsReserve, promote, renewLease } from '../control/heads.ts';
import { listDumps, readDump } from '../control/dumps.ts';
import { driveId } from '../core/drive-records.ts';
import { listDrives } from '../maintenance/drives.ts';
import { driveView } from '../maintenance/evacuation-progress.ts';
import { peekDeadLetters, redriveDeadLetters } from '../maintenance/dead-letters.ts';
import { describeDrive, reactivateDriveView, retireDrive } from '../maintenance/evacuation.ts';
import { queueGc } from '../maintenance/gc.ts';
import { startFlatten } from '../maintenance/flatten.ts';
import { checkKey } from '../control/reservations.ts';
import type { WriterIdentity } from '../data/segments.ts';
import { HEAD_ID, MAX_IO_BYTES } from '../data/volume-rules.ts';
import { describeReservations, applyReservationBody } from '../control/reservation-commands.ts';
import { applyReadLeaseBody } from '../control/read-lease-commands.ts';
import { createVolume, deleteVolume, describeVolume, listVolumeViews, resizeVolume } from '../control/volumes.ts';
import { readAllocation, readData, readSnapshotData } from '../data/read.ts';
import type { ReadReport } from '../data/segment-reader.ts';
import { headBodyBuffers, type Lease } from '../data/buffer-pool.ts';
import { planRead } from '../data/read-plan.ts';
import { commitByReference, planWrite } from '../data/direct-write.ts';
import { changedBlocks, createSnapshot, deleteSnapshot, describeSnapshot, listSnapshotViews, rollbackVolume } from '../control/snapshots.ts';
import { trimRange, writeData, writePieces } from '../data/write.ts';
import {
  BACKUP_OWNER,
  GROUP_BACKUP_OWNER,
  GROUP_RESTORE_OWNER,
  RESTORE_OWNER,
  backupOwner,
  checkGroupRestoreSource,
  checkRestoreSource,
  groupBackupOrRestoreOwner,
  requireVault,
  restoreOwner,
} from './backup-routes.ts';
import {
  deleteGroupBackup,
  describeGroupBackup,
  describeGroupRestore,
  listGroupBackupViews,
  listGroupRestoreViews,
  startGroupBackup,
  startGroupRestore,
} from '../backup/groups.ts';
import { describeBackup, listBackupViews, startBackup } from '../backup/backup.ts';
import { deleteBackup, verifyBackup } from '../backup/delete.ts';
import { describeRestore, listRestoreViews, startRestore } from '../backup/restore.ts';
import { changeGroup, createGroup, deleteGroup, describeGroup, groupOwner } from '../control/groups.ts';
import { createGroupSnapshot, deleteGroupSnapshot, describeGroupSnapshot, listGroupSnapshotViews, parseGroupSnapshotBody } from '../control/group-snapshots.ts';
import openapi from './openapi.json' with { type: 'json' };

/** A write plan's or commit's JSON: up to 16,384 extents and the CRCs of k+m chunks. */
const WRITE_PLAN_BODY_MAX_BYTES = 1024 * 1024;

function requireBinary(req: Request, allowed: string[]): void {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
  if (!allowed.includes(type)) throw new UnsupportedMediaTypeError(`expected content-type ${allowed.join(' or ')}, got ${type || 'none'}`);
}

/** The reservation key a request presents, if any (validated: a malformed key is a 400). */
function requestKey(req: Request): string | undefined {
  const key = req.headers['x-sledge-reservation-key'];
  return key === undefined ? undefined : checkKey(key, 'x-sledge-reservation-key');
}

function writer(req: Request): WriterIdentity {
  const key = requestKey(req);
  return key === undefined ? { id: HEAD_ID } : { id: HEAD_ID, key };
}

/**
 * Owners of volumes, by id. An owner never changes and a volume id is never reused, so a head
 * looks each one up once (bounded, oldest forgotten first).
 */
const volumeOwners = new Map<string, string | undefined>();
const VOLUME_OWNERS_MAX = 10_000;

async function volumeOwner(volumeId: string): Promise<string | undefined | null> {
  if (volumeOwners.has(volumeId)) return volumeOwners.get(volumeId);
  const v = await pageMap().getVolume(volumeId);
  if (!v) return null;
  if (volumeOwners.size >= VOLUME_OWNERS_MAX) volumeOwners.delete(volumeOwners.keys().next().value!);
  volumeOwners.set(volumeId, v.owner);
  return v.owner;
}

/** A snapshot belongs to its volume's owner (the id names the volume: docs/snapshots.md). */
async function snapshotOwner(snapshotId: string): Promise<string | undefined | null> {
  let volumeId: string;
  try {
    volumeId = snapshotVolume(snapshotId);
  } catch {
    return null;
  }
  return volumeOwner(volumeId);
}

const SNAPSHOT_OWNER = owned('snapshot', 'snapshotId');
const GROUP_OWNER = owned('group', 'groupId');

/** The caller's ARN when it is a tenant (whose requests see only its own volumes); undefined for operators. */
function tenantOf(req: Request): string | undefined {
  const p = req.principal;
  return p === undefined || p.operator ? undefined : p.arn;
}
const SNAPSHOT_DATA = owned('snapshot', 'snapshotId', { audit: false });

/** A clone is made only from a snapshot the caller could read (another tenant's reads as missing). */
async function checkCloneSource(req: Request, body: Record<string, unknown>): Promise<void> {
  const source = body.sourceSnapshotId;
  if (typeof source !== 'string' || req.principal === undefined || req.principal.operator) return;
  if ((await snapshotOwner(source)) !== req.principal.arn) throw new NotFoundError(`snapshot ${source} does not exist`);
}

/** The owner a new volume gets: the caller, unless authorization is off (no owner: operators only). */
function newOwner(req: Request): string | undefined {
  const p = req.principal;
  return p === undefined || p.arn === 'anonymous' ? undefined : p.arn;
}

/**
 * A read's bytes in a buffer leased from `headBodyBuffers`: `allocate` for the read, `release`
 * for the response, called once the bytes are encoded into it. On a failure the lease is dropped,
 * never given back: a chunk read may still be writing into it.
 */
function pooledBytes(): { allocate: (bytes: number) => Buffer; release: () => void } {
  let lease: Lease | undefined;
  return {
    allocate: (bytes) => (lease = headBodyBuffers.take(bytes)).buffer,
    release: () => lease?.release(),
  };
}

export const router = new Router()
  .resource('volume', volumeOwner)
  .resource('snapshot', snapshotOwner)
  .resource('backup', backupOwner)
  .resource('restore', restoreOwner)
  .resource('group', groupOwner)
  .resource('groupBackup', (id) => groupBackupOrRestoreOwner('backup', id))
  .resource('groupRestore', (id) => groupBackupOrRestoreOwner('restore', id))
  .on('GET', '/openapi.json', ANY_PRINCIPAL, async () => ({ status: 200, json: openapi }))
  .on('GET', '/volumes', ANY_PRINCIPAL, async (req) => ({
    status: 200,
    json: await listVolumeViews(req.query.limit, req.query.next, ownerFilter(req.principal)),
  }))
  .on('POST', '/volumes', ANY_PRINCIPAL, async (req) => {
    const body = jsonBody(req);
    await checkCloneSource(req, body);
    return { status: 201, json: await createVolume(body, newOwner(req)) };
  })
  .on('GET', '/volumes/{volumeId}', VOLUME_OWNER, async (req) => ({ status: 200, json: await describeVolume(req.params.volumeId!) }))
  .on('PATCH', '/volumes/{volumeId}', VOLUME_OWNER, async (req) => ({ status: 200, json: await resizeVolume(req.params.volumeId!, jsonBody(req)) }))
  .on('DELETE', '/volumes/{volumeId}', VOLUME_OWNER, async (req) => ({ status: 202, json: await deleteVolume(req.params.volumeId!) }))
  .on('PUT', '/volumes/{volumeId}/data', VOLUME_DATA, async (req) => {
    requireBinary(req, ['application/octet-stream']);
    if (req.body.length > MAX_IO_BYTES) throw new PayloadTooLargeError(`a write carries at most ${MAX_IO_BYTES} bytes, this one ${req.body.length}`);
    const offset = intQuery(req, 'offset');
    return { status: 200, json: await writeData(req.params.volumeId!, offset, req.body, writer(req)) };
  })
  .on('GET', '/volumes/{volumeId}/data', VOLUME_DATA, async (req) => {
    const offset = intQuery(req, 'offset');
    const length = intQuery(req, 'length');
    const report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 };
    const pool = pooledBytes();
    const bytes = await readData(req.params.volumeId!, offset, length, report, requestKey(req), pool.allocate);
    // Degraded reads are visible to the client: how many granules failed and were rebuilt.
    return {
      status: 200,
      bytes,
      headers: {
        'x-sledge-ranged-gets': String(report.rangedGets),
        'x-sledge-bad-granules': String(report.badGranules),
        'x-sledge-rebuilt-granules': String(report.rebuiltGranules),
        'x-sledge-get-rounds': String(report.getRounds ?? 0),
      },
      release: pool.release,
    };
  })
  .on('GET', '/volumes/{volumeId}/allocation', VOLUME_DATA, async (req) => {
    const offset = intQuery(req, 'offset');
    const length = intQuery(req, 'length');
    return { status: 200, json: { runs: await readAllocation(req.params.volumeId!, offset, length, requestKey(req)) } };
  })
  .on('GET', '/volumes/{volumeId}/read-plan', VOLUME_DATA, async (req) => {
    const offset = intQuery(req, 'offset');
    const length = intQuery(req, 'length');
    return { status: 200, json: await planRead(req.params.volumeId!, offset, length, requestKey(req)) };
  })
  // Direct writes (docs/nbd-gateway.md): a plan for a segment the caller encodes, and its commit by reference.
  .on('POST', '/volumes/{volumeId}/write-plan', VOLUME_DATA, async (req) => ({
    status: 200,
    json: await planWrite(req.params.volumeId!, jsonBody(req, WRITE_PLAN_BODY_MAX_BYTES), requestKey(req)),
  }))
  .on('POST', '/volumes/{volumeId}/commit', VOLUME_DATA, async (req) => ({
    status: 200,
    json: await commitByReference(req.params.volumeId!, jsonBody(req, WRITE_PLAN_BODY_MAX_BYTES), requestKey(req)),
  }))
  .on('POST', '/volumes/{volumeId}/batch', VOLUME_DATA, async (req) => {
    requireBinary(req, [BATCH_CONTENT_TYPE, 'application/octet-stream']);
    if (req.body.length > MAX_IO_BYTES + MAX_BATCH_HEADER_BYTES + 8)
      throw new PayloadTooLargeError(`a batch body is at most ${MAX_IO_BYTES} bytes of data plus its header`);
    return { status: 200, json: await writePieces(req.params.volumeId!, decodeBatch(req.body), writer(req)) };
  })
  .on('POST', '/volumes/{volumeId}/trim', VOLUME_DATA, async (req) => {
    const body = jsonBody(req);
    const extra = Object.keys(body).filter((k) => k !== 'offset' && k !== 'length');
    if (extra.length > 0) throw new InvalidInputError(`unknown field ${extra[0]}; a trim takes offset and length`);
    if (typeof body.offset !== 'number' || typeof body.length !== 'number') throw new InvalidInputError('a trim needs numeric offset and length');
    return { status: 200, json: await trimRange(req.params.volumeId!, body.offset, body.length, writer(req)) };
  })
  .on('GET', '/volumes/{volumeId}/reservations', VOLUME_OWNER, async (req) => ({ status: 200, json: await describeReservations(req.params.volumeId!) }))
  .on('POST', '/volumes/{volumeId}/reservations', VOLUME_OWNER, async (req) => {
    return { status: 200, json: await applyReservationBody(req.params.volumeId!, jsonBody(req)) };
  })
  .on('POST', '/volumes/{volumeId}/read-lease', VOLUME_OWNER, async (req) => ({
    status: 200,
    json: await applyReadLeaseBody(req.params.volumeId!, jsonBody(req)),
  }))
  .on('GET', '/volumes/{volumeId}/heads', VOLUME_OWNER, async (req) => ({ status: 200, json: await describeHeads(req.params.volumeId!) }))
  .on('PUT', '/volumes/{volumeId}/heads', VOLUME_OWNER, async (req) => ({ status: 200, json: await designateHeads(req.params.volumeId!, jsonBody(req)) }))
  .on('POST', '/volumes/{volumeId}/heads/renew', VOLUME_OWNER, async (req) => ({ status: 200, json: await renewLease(req.params.volumeId!, jsonBody(req)) }))
  .on('POST', '/volumes/{volumeId}/heads/promote', VOLUME_OWNER, async (req) => ({ status: 200, json: await promote(req.params.volumeId!, jsonBody(req)) }))
  .on('POST', '/volumes/{volumeId}/heads/fail', OPERATOR, async (req) => ({ status: 200, json: await forcedFailure(req.params.volumeId!, jsonBody(req)) }))
  .on('GET', '/dumps', OPERATOR, async () => ({ status: 200, json: { dumps: await listDumps() } }))
  .on('GET', '/dumps/{dumpId}', OPERATOR, async (req) => ({ status: 200, json: await readDump(req.params.dumpId!) }))
  .on('GET', '/drives', OPERATOR, async () => ({ status: 200, json: { drives: (await listDrives()).map((d) => driveView(d)) } }))
  // A drive id is `<sled>/<drive>`: its two parts are two path segments.
  .on('GET', '/drives/{sled}/{drive}', OPERATOR, async (req) => ({ status: 200, json: await describeDrive(driveId(req.params.sled!, req.params.drive!)) }))
  .on('POST', '/drives/{sled}/{drive}/retire', OPERATOR, async (req) => {
    const body = req.body.length === 0 ? {} : jsonBody(req);
    const extra = Object.keys(body).filter((k) => k !== 'reason');
    if (extra.length > 0) throw new InvalidInputError(`unknown field ${extra[0]}; a retire takes an optional reason`);
    if (body.reason !== undefined && (typeof body.reason !== 'string' || body.reason.length > 200))
      throw new InvalidInputError('reason must be a string of at most 200 characters');
    return { status: 202, json: await retireDrive(driveId(req.params.sled!, req.params.drive!), (body.reason as string | undefined) ?? 'operator') };
  })
  .on('POST', '/drives/{sled}/{drive}/reactivate', OPERATOR, async (req) => {
    const extra = Object.keys(req.body.length === 0 ? {} : jsonBody(req));
    if (extra.length > 0) throw new InvalidInputError(`unknown field ${extra[0]}; a reactivate takes no fields`);
    return { status: 200, json: await reactivateDriveView(driveId(req.params.sled!, req.params.drive!)) };
  })
  .on('GET', '/queues/dead-letters', OPERATOR, async () => ({ status: 200, json: await peekDeadLetters() }))
  .on('POST', '/queues/dead-letters/redrive', OPERATOR, async (req) => ({
    status: 200,
    json: await redriveDeadLetters(req.body.length === 0 ? {} : jsonBody(req)),
  }))
  .on('POST', '/volumes/{volumeId}/gc', OPERATOR, async (req) => {
    await describeVolume(req.params.volumeId!); // 404 for a volume that does not exist
    await queueGc(req.params.volumeId!);
    return { status: 202, json: { volumeId: req.params.volumeId, queued: 'gc-volume' } };
  })
  .on('POST', '/volumes/{volumeId}/heads/join', VOLUME_OWNER, async (req) => {
    return { status: 200, json: await joinAsReserve(req.params.volumeId!, jsonBody(req)) };
  })
  // Snapshots, snapshot reads and changed blocks (docs/snapshots.md). Clones are POST /volumes.
  .on('POST', '/volumes/{volumeId}/snapshots', VOLUME_OWNER, async (req) => ({
    status: 201,
    json: await createSnapshot(req.params.volumeId!, optionalJsonBody(req), writer(req)),
  }))
  .on('GET', '/volumes/{volumeId}/snapshots', VOLUME_OWNER, async (req) => ({
    status: 200,
    json: await listSnapshotViews(req.params.volumeId!, req.query.limit, req.query.next),
  }))
  .on('POST', '/volumes/{volumeId}/rollback', VOLUME_OWNER, async (req) => ({
    status: 200,
    json: await rollbackVolume(req.params.volumeId!, jsonBody(req), writer(req)),
  }))
  .on('POST', '/volumes/{volumeId}/flatten', VOLUME_OWNER, async (req) => ({ status: 202, json: await startFlatten(req.params.volumeId!) }))
  .on('GET', '/snapshots/{snapshotId}', SNAPSHOT_OWNER, async (req) => ({ status: 200, json: await describeSnapshot(req.params.snapshotId!) }))
  .on('DELETE', '/snapshots/{snapshotId}', SNAPSHOT_OWNER, async (req) => ({ status: 202, json: await deleteSnapshot(req.params.snapshotId!) }))
  .on('GET', '/snapshots/{snapshotId}/data', SNAPSHOT_DATA, async (req) => {
    const offset = intQuery(req, 'offset');
    const length = intQuery(req, 'length');
    const report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 };
    const pool = pooledBytes();
    const bytes = await readSnapshotData(req.params.snapshotId!, offset, length, report, pool.allocate);
    return { status: 200, bytes, headers: { 'x-sledge-ranged-gets': String(report.rangedGets) }, release: pool.release };
  })
  .on('GET', '/snapshots/{snapshotId}/changed-blocks', SNAPSHOT_OWNER, async (req) => ({
    status: 200,
    json: await changedBlocks(req.params.snapshotId!, req.query.base, req.query.limit, req.query.next),
  }))
  // Consistency groups and group snapshots (docs/consistency-groups.md).
  .on('POST', '/consistency-groups', ANY_PRINCIPAL, async (req) => ({ status: 201, json: await createGroup(jsonBody(req), tenantOf(req)) }))
  .on('GET', '/consistency-groups/{groupId}', GROUP_OWNER, async (req) => ({ status: 200, json: await describeGroup(req.params.groupId!) }))
  .on('PATCH', '/consistency-groups/{groupId}', GROUP_OWNER, async (req) => ({
    status: 200,
    json: await changeGroup(req.params.groupId!, jsonBody(req), tenantOf(req)),
  }))
  .on('DELETE', '/consistency-groups/{groupId}', GROUP_OWNER, async (req) => ({ status: 200, json: await deleteGroup(req.params.groupId!) }))
  .on('POST', '/consistency-groups/{groupId}/snapshots', GROUP_OWNER, async (req) => ({
    status: 201,
    json: await createGroupSnapshot(req.params.groupId!, writer(req), parseGroupSnapshotBody(optionalJsonBody(req))),
  }))
  .on('GET', '/consistency-groups/{groupId}/snapshots', GROUP_OWNER, async (req) => ({
    status: 200,
    json: await listGroupSnapshotViews(req.params.groupId!, req.query.limit, req.query.next),
  }))
  .on('GET', '/consistency-groups/{groupId}/snapshots/{groupSnapshotId}', GROUP_OWNER, async (req) => ({
    status: 200,
    json: await describeGroupSnapshot(req.params.groupId!, req.params.groupSnapshotId!),
  }))
  .on('DELETE', '/consistency-groups/{groupId}/snapshots/{groupSnapshotId}', GROUP_OWNER, async (req) => ({
    status: 202,
    json: await deleteGroupSnapshot(req.params.groupId!, req.params.groupSnapshotId!),
  }))
  // Checkpoints and rebuild (docs/checkpoints.md). `mode: queue` hands the job to the worker.
  .on('GET', '/volumes/{volumeId}/checkpoints', VOLUME_OWNER, async (req) => ({ status: 200, json: await listCheckpoints(req.params.volumeId!) }))
  .on('POST', '/volumes/{volumeId}/checkpoints', VOLUME_OWNER, async (req) => {
    const volumeId = req.params.volumeId!;
    if (parseMode(optionalJsonBody(req)) === 'queue') {
      const v = await describeVolume(volumeId);
      await sendCheckpointMessage({ type: 'checkpoint-volume', volumeId, requestedAtSeq: v.commitSeq });
      return { status: 202, json: { queued: true, volumeId, requestedAtSeq: v.commitSeq } };
    }
    const out = await takeCheckpoint(volumeId);
    if (out.done === 'skipped') throw new ConflictError(`${out.reason}; no checkpoint was taken`);
    return { status: out.done === 'written' ? 201 : 200, json: out };
  })
  .on('POST', '/volumes/{volumeId}/rebuild', OPERATOR, async (req) => {
    const volumeId = req.params.volumeId!;
    if (parseMode(optionalJsonBody(req)) === 'queue') {
      await describeVolume(volumeId);
      await sendCheckpointMessage({ type: 'rebuild-volume', volumeId });
      return { status: 202, json: { queued: true, volumeId } };
    }
    return { status: 200, json: await rebuildPageMap(volumeId) };
  })
  // Backups to the vault and restores (docs/backup.md).
  .on('POST', '/volumes/{volumeId}/backups', VOLUME_OWNER, async (req) => {
    requireVault();
    return { status: 202, json: await startBackup(req.params.volumeId!, jsonBody(req)) };
  })
  .on('GET', '/backups', ANY_PRINCIPAL, async (req) => {
    requireVault();
    return { status: 200, json: await listBackupViews(req.query.volumeId, req.query.limit, req.query.next, ownerFilter(req.principal)) };
  })
  .on('GET', '/backups/{backupId}', BACKUP_OWNER, async (req) => ({ status: 200, json: await describeBackup(req.params.backupId!) }))
  .on('DELETE', '/backups/{backupId}', BACKUP_OWNER, async (req) => ({ status: 202, json: await deleteBackup(req.params.backupId!) }))
  .on('POST', '/backups/{backupId}/verify', BACKUP_OWNER, async (req) => ({ status: 200, json: await verifyBackup(req.params.backupId!) }))
  .on('POST', '/restores', ANY_PRINCIPAL, async (req) => {
    requireVault();
    const body = jsonBody(req);
    await checkRestoreSource(req, body);
    return { status: 202, json: await startRestore(body, newOwner(req)) };
  })
  .on('GET', '/restores', ANY_PRINCIPAL, async (req) => {
    requireVault();
    return {
      status: 200,
      json: await listRestoreViews({ volumeId: req.query.volumeId, backupId: req.query.backupId }, req.query.limit, req.query.next, ownerFilter(req.principal)),
    };
  })
  .on('GET', '/restores/{restoreId}', RESTORE_OWNER, async (req) => ({ status: 200, json: await describeRestore(req.params.restoreId!) }))
  // Group snapshots backed up and restored as a group (docs/consistency-groups.md).
  .on('POST', '/consistency-groups/{groupId}/snapshots/{groupSnapshotId}/backups', GROUP_OWNER, async (req) => {
    requireVault();
    return { status: 202, json: await startGroupBackup(req.params.groupId!, req.params.groupSnapshotId!, optionalJsonBody(req)) };
  })
  .on('GET', '/group-backups', ANY_PRINCIPAL, async (req) => {
    requireVault();
    return { status: 200, json: await listGroupBackupViews(req.query.groupId, req.query.limit, req.query.next, ownerFilter(req.principal)) };
  })
  .on('GET', '/group-backups/{groupBackupId}', GROUP_BACKUP_OWNER, async (req) => ({ status: 200, json: await describeGroupBackup(req.params.groupBackupId!) }))
  .on('DELETE', '/group-backups/{groupBackupId}', GROUP_BACKUP_OWNER, async (req) => ({
    status: 202,
    json: await deleteGroupBackup(req.params.groupBackupId!),
  }))
  .on('POST', '/group-restores', ANY_PRINCIPAL, async (req) => {
    requireVault();
    const body = jsonBody(req);
    await checkGroupRestoreSource(req, body);
    return { status: 202, json: await startGroupRestore(body, newOwner(req)) };
  })
  .on('GET', '/group-restores', ANY_PRINCIPAL, async (req) => {
    requireVault();
    return { status: 200, json: await listGroupRestoreViews(req.query.groupBackupId, req.query.limit, req.query.next, ownerFilter(req.principal)) };
  })
  .on('GET', '/group-restores/{groupRestoreId}', GROUP_RESTORE_OWNER, async (req) => ({
    status: 200,
    json: await describeGroupRestore(req.params.groupRestoreId!),
  }));

// A head that hits a bug while serving a volume dumps its in-flight state before answering 500.
router.onUnexpectedError(async (err, req) => {
  const volumeId = req.params.volumeId;
  if (!volumeId) return;
  const error = err instanceof Error ? err : new Error(String(err));
  const dump = await failHead(volumeId, HEAD_ID, error);
  await dump.done;
  console.error(`head ${HEAD_ID} failed on volume ${volumeId}; dump ${dump.dumpId} written to ${dump.driveId}`);
});

/** Handles one API Gateway event. */
export function handleApiEvent(event: Parameters<Router['handle']>[0]) {
  const c = config();
  return router.handle(event, { development: c.development, auth: { mode: c.apiAuth, operators: c.operatorPrincipals } });
}
