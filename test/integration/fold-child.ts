/**
 * A folder in a process of its own, for the test that kills it mid-merge (fold.test.ts).
 * Arguments: the volume id and the page writes after which it stops. It folds the volume's
 * tail, prints `{"stoppedAfter": n}` once n pages are written and then waits forever, for the
 * test to SIGKILL it between two page writes. The environment is the test's.
 */
import { foldVolume } from '#shared/maintenance/fold.ts';

const [volumeId, afterArg] = process.argv.slice(2);
const after = Number(afterArg);
if (!volumeId || !Number.isSafeInteger(after) || after < 1) {
  console.error('usage: fold-child.ts <volumeId> <pageWrites>');
  process.exit(2);
}
let stopped = false;
await foldVolume(volumeId, {
  hooks: {
    afterPageWrite: async (written) => {
      if (written < after) return;
      if (!stopped) console.log(JSON.stringify({ stoppedAfter: written }));
      stopped = true;
      await new Promise(() => undefined); // every page writer is held here until killed
    },
  },
});
console.error('the folder finished without stopping');
process.exit(1);
