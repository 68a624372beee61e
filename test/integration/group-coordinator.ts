/**
 * A group-snapshot coordinator in a process of its own, for the test that kills it
 * (group-coordinator-kill.test.ts). Arguments: the group id, the barrier lease in ms, and the
 * step to stop at (`barriers`, `members` or `commit`). It takes a group snapshot on the barrier
 * path (one member per transaction), prints `{"groupSnapshotId": ...}` at that step and then
 * waits forever, for the test to SIGKILL it. The environment is the control plane's.
 */
import { createGroupSnapshot } from '#shared/control/group-snapshots.ts';

const [groupId, leaseArg, step] = process.argv.slice(2);
if (!groupId || !leaseArg || !['barriers', 'members', 'commit'].includes(step ?? '')) {
  console.error('usage: group-coordinator.ts <groupId> <leaseMs> barriers|members|commit');
  process.exit(2);
}
const stopHere = async (groupSnapshotId: string) => {
  console.log(JSON.stringify({ groupSnapshotId, step }));
  await new Promise(() => undefined); // held here until killed
};
await createGroupSnapshot(
  groupId,
  { id: `coordinator-${process.pid}` },
  {
    transactionMembers: 1,
    leaseMs: Number(leaseArg),
    hooks: step === 'barriers' ? { afterBarriers: stopHere } : step === 'members' ? { afterFirstMembers: stopHere } : { afterCommit: stopHere },
  },
);
console.error('the coordinator finished without stopping');
process.exit(1);
