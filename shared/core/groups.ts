/**
 * Consistency groups as the domain sees them (docs/consistency-groups.md): the group, its group
 * snapshots, and the store port the DynamoDB adapter (shared/aws/pagemap/groups.ts) implements.
 */
import type { CommitWriter, SnapshotRecord, VolumeRecord, WriteBarrier } from './records.ts';

export interface GroupRecord {
  groupId: string;
  name: string;
  /** The members' owner (all members have one owner); absent: operators only. */
  owner?: string;
  members: string[];
  createdAt: string;
  /** Grows by one with every membership change (the condition of the next one). */
  version: number;
}

/** `pending`: being taken on the barrier path; `deleting`: aborted or being deleted. */
export type GroupSnapshotState = 'pending' | 'ready' | 'deleting';

export interface GroupSnapshotRecord {
  groupId: string;
  groupSnapshotId: string;
  state: GroupSnapshotState;
  members: Array<{ volumeId: string; snapshotId: string; seq: number }>;
  createdAt: string;
  /** A `pending` group snapshot whose lease passed may be aborted by anyone (the coordinator's clock). */
  leaseExpiresAtMs: number;
}

/** One member's snapshot record, as a group snapshot writes it, and the requester as that member's commits are fenced. */
export interface GroupMemberSnapshot {
  record: SnapshotRecord;
  writer: CommitWriter;
  /** Whether the member's new tag lies in its tail (docs/page-map.md, "Snapshots on a tail"): the worker is asked to fold up to it. */
  inTail: boolean;
}

/** A member whose snapshot condition failed, and its volume item as it was then (null: gone). */
export interface MemberRefusal {
  volumeId: string;
  current: VolumeRecord | null;
}

export type MembershipOutcome = { ok: true } | { ok: false; volumeId: string; current: VolumeRecord | null } | { ok: false; groupChanged: true };

export interface GroupStore {
  /** Several volume items at once (consistent), in order; null for a missing one. */
  getVolumes(volumeIds: readonly string[]): Promise<Array<VolumeRecord | null>>;
  getGroup(groupId: string): Promise<GroupRecord | null>;
  createGroup(g: GroupRecord): Promise<MembershipOutcome>;
  changeGroupMembers(g: GroupRecord, members: string[], add: string[], remove: string[]): Promise<MembershipOutcome>;
  deleteGroup(g: GroupRecord): Promise<MembershipOutcome>;
  getGroupSnapshot(groupId: string, groupSnapshotId: string): Promise<GroupSnapshotRecord | null>;
  /** A group's group snapshot items (any state) in id order: all, or those `after` an id, at most `limit`. */
  listGroupSnapshots(groupId: string, opts?: { after?: string; limit?: number }): Promise<GroupSnapshotRecord[]>;
  takeGroupSnapshotAtOnce(gs: GroupSnapshotRecord, members: readonly GroupMemberSnapshot[]): Promise<MemberRefusal[]>;
  snapshotMembers(groupId: string, members: readonly GroupMemberSnapshot[]): Promise<MemberRefusal[]>;
  putGroupSnapshot(gs: GroupSnapshotRecord): Promise<void>;
  setGroupSnapshotState(
    groupId: string,
    groupSnapshotId: string,
    from: GroupSnapshotState,
    to: GroupSnapshotState,
    opts?: { lease?: 'live' | 'passed'; members?: GroupSnapshotRecord['members'] },
  ): Promise<boolean>;
  deleteGroupSnapshotItem(groupId: string, groupSnapshotId: string): Promise<void>;
  raiseBarriers(volumeIds: readonly string[], groupId: string, barrier: WriteBarrier): Promise<boolean>;
  dropBarriers(volumeIds: readonly string[], groupSnapshotId: string): Promise<void>;
  readyMembers(records: ReadonlyArray<Pick<SnapshotRecord, 'volumeId' | 'snapshotId'>>): Promise<void>;
  setSnapshotState(s: Pick<SnapshotRecord, 'volumeId' | 'snapshotId'>, from: string, to: string): Promise<boolean>;
}
