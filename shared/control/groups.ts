/**
 * Consistency groups (docs/consistency-groups.md): create, describe, change members, delete.
 * Group snapshots are in shared/control/group-snapshots.ts.
 */
import { randomBytes } from 'node:crypto';
import { ConflictError, ForbiddenError, InvalidInputError, NotFoundError } from '../core/errors.ts';
import type { GroupRecord, MembershipOutcome } from '../core/groups.ts';
import type { VolumeRecord } from '../core/records.ts';
import { groupStore, pageMap } from '../ports.ts';

/** Members per group: a create writes the group and every member in one transaction (100 items). */
export const MAX_GROUP_MEMBERS = 64;
const GROUP_ID = /^cg-[0-9a-f]{16}$/;

export interface GroupView {
  groupId: string;
  name: string;
  volumeIds: string[];
  owner?: string;
  createdAt: string;
}

export function groupView(g: GroupRecord): GroupView {
  const out: GroupView = { groupId: g.groupId, name: g.name, volumeIds: g.members, createdAt: g.createdAt };
  if (g.owner !== undefined) out.owner = g.owner;
  return out;
}

export function newGroupId(): string {
  return `cg-${randomBytes(8).toString('hex')}`;
}

/** The group, or 404 (also for ids that cannot be group ids). */
export async function requireGroup(groupId: string): Promise<GroupRecord> {
  const g = GROUP_ID.test(groupId) ? await groupStore().getGroup(groupId) : null;
  if (!g) throw new NotFoundError(`consistency group ${groupId} does not exist`);
  return g;
}

/** The owner of a group for the router's access check: its ARN, undefined for none, null when it does not exist. */
export async function groupOwner(groupId: string): Promise<string | undefined | null> {
  const g = GROUP_ID.test(groupId) ? await groupStore().getGroup(groupId) : null;
  return g ? g.owner : null;
}

function checkFields(body: Record<string, unknown>, allowed: string[]): void {
  const extra = Object.keys(body).filter((k) => !allowed.includes(k));
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; allowed: ${allowed.join(', ')}`);
}

function volumeIdList(value: unknown, field: string, min: number): string[] {
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || v.length === 0 || v.length > 64)) {
    throw new InvalidInputError(`${field} must be a list of volume ids`);
  }
  if (value.length < min) throw new InvalidInputError(`${field} must name at least ${min} volume${min === 1 ? '' : 's'}`);
  if (value.length > MAX_GROUP_MEMBERS) throw new InvalidInputError(`${field} names ${value.length} volumes; a group has at most ${MAX_GROUP_MEMBERS} members`);
  if (new Set(value).size !== value.length) throw new InvalidInputError(`${field} names a volume twice`);
  return value as string[];
}

function nameField(value: unknown): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 128) throw new InvalidInputError('name must be a string of 1 to 128 characters');
  return value;
}

/**
 * Reads the volumes that are to join a group and checks them as the transaction will: each
 * exists and serves (404; another tenant's volume reads as missing), all have `owner` (403),
 * none is in a group (409). Returns their common owner.
 */
async function checkJoiners(volumeIds: readonly string[], tenant: string | undefined, owner?: { value: string | undefined }): Promise<string | undefined> {
  const volumes = await Promise.all(volumeIds.map((id) => pageMap().getVolume(id)));
  volumes.forEach((v, i) => {
    if (!v || v.state !== 'active' || (tenant !== undefined && v.owner !== tenant)) throw new NotFoundError(`volume ${volumeIds[i]} does not exist`);
  });
  const found = volumes as VolumeRecord[];
  const owners = new Set(found.map((v) => v.owner));
  if (owner) owners.add(owner.value);
  if (owners.size > 1) throw new ForbiddenError('the volumes of a consistency group must all have one owner');
  const taken = found.find((v) => v.groupId !== undefined);
  if (taken) throw new ConflictError(`volume ${taken.volumeId} is already in consistency group ${taken.groupId}`);
  return found[0]?.owner ?? owner?.value;
}

/** Turns a refused membership transaction into the same answer the checks give. */
function refusal(out: MembershipOutcome, groupId: string): Error {
  if (out.ok) return new Error('not a refusal');
  if ('groupChanged' in out) return new ConflictError(`consistency group ${groupId} changed meanwhile; read it again and retry`);
  const v = out.current;
  if (!v || v.state !== 'active') return new NotFoundError(`volume ${out.volumeId} does not exist`);
  if (v.groupId !== undefined && v.groupId !== groupId) return new ConflictError(`volume ${out.volumeId} is already in consistency group ${v.groupId}`);
  return new ConflictError(`volume ${out.volumeId} changed meanwhile; retry`);
}

/** `POST /consistency-groups { name, volumeIds }`. `tenant`: the caller's ARN when it is not an operator. */
export async function createGroup(body: Record<string, unknown>, tenant: string | undefined, opts: { groupId?: string } = {}): Promise<GroupView> {
  checkFields(body, ['name', 'volumeIds']);
  const name = nameField(body.name);
  const members = volumeIdList(body.volumeIds, 'volumeIds', 1);
  const owner = await checkJoiners(members, tenant);
  const g: GroupRecord = { groupId: opts.groupId ?? newGroupId(), name, members, createdAt: new Date().toISOString(), version: 1 };
  if (owner !== undefined) g.owner = owner;
  const out = await groupStore().createGroup(g);
  if (!out.ok) throw refusal(out, g.groupId);
  return groupView(g);
}

export async function describeGroup(groupId: string): Promise<GroupView> {
  return groupView(await requireGroup(groupId));
}

/** `PATCH /consistency-groups/{id} { name?, add?, remove? }`: the members joining and leaving, in one transaction. */
export async function changeGroup(groupId: string, body: Record<string, unknown>, tenant: string | undefined): Promise<GroupView> {
  checkFields(body, ['add', 'remove']);
  const add = body.add === undefined ? [] : volumeIdList(body.add, 'add', 0);
  const remove = body.remove === undefined ? [] : volumeIdList(body.remove, 'remove', 0);
  if (add.length + remove.length === 0) throw new InvalidInputError('a change names volumes to add or remove');
  const g = await requireGroup(groupId);
  const both = add.find((v) => remove.includes(v));
  if (both) throw new InvalidInputError(`volume ${both} is both added and removed`);
  const present = add.find((v) => g.members.includes(v));
  if (present) throw new InvalidInputError(`volume ${present} is already a member of consistency group ${groupId}`);
  const absent = remove.find((v) => !g.members.includes(v));
  if (absent) throw new InvalidInputError(`volume ${absent} is not a member of consistency group ${groupId}`);
  const members = [...g.members.filter((v) => !remove.includes(v)), ...add];
  if (members.length > MAX_GROUP_MEMBERS) throw new InvalidInputError(`the group would have ${members.length} members; at most ${MAX_GROUP_MEMBERS}`);
  if (members.length === 0) throw new InvalidInputError('a group keeps at least one member; delete the group instead');
  if (add.length > 0) await checkJoiners(add, tenant, { value: g.owner });
  const out = await groupStore().changeGroupMembers(g, members, add, remove);
  if (!out.ok) throw refusal(out, groupId);
  return groupView({ ...g, members, version: g.version + 1 });
}

/** `DELETE /consistency-groups/{id}`: refused while the group has group snapshots. */
export async function deleteGroup(groupId: string): Promise<GroupView> {
  const g = await requireGroup(groupId);
  const snapshots = await groupStore().listGroupSnapshots(groupId);
  if (snapshots.length > 0) {
    const ids = snapshots.slice(0, 5).map((s) => s.groupSnapshotId);
    throw new ConflictError(`consistency group ${groupId} has ${snapshots.length} group snapshots (${ids.join(', ')}); delete them first`);
  }
  const out = await groupStore().deleteGroup(g);
  if (!out.ok) throw refusal(out, groupId);
  return groupView(g);
}
