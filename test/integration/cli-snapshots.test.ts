import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { pageMap } from '#shared/ports.ts';
import { Api, http, PROFILES, testApi } from './helpers.ts';
import { expectCliErrors, expectUsageErrors, sledge } from './cli-tools.ts';
import { describeRun } from './nbd-tools.ts';

/**
 * `sledge snapshot create|list|delete` and `sledge clone`: the real CLI, as a process, against
 * the local API; what it prints is checked against what the API then says and reads.
 */
const MiB = 1024 * 1024;

const { api, apiUrl: url } = testApi({ sledgeEnv: true });


/** A snapshot line: id, commit, size, creation time, then the optional name and clones. */
const SNAPSHOT_LINE = /^(snap-[0-9a-f]+-\d{12}-[0-9a-f]{6}) {2}commit (\d+) {2}(\S+ \S+) {2}(\S+)(?: {2}(".*"))?(?: {2}clones (\S+))?$/;

describe('sledge snapshot and sledge clone', () => {
  it('take, list, clone and delete snapshots, each line agreeing with the API', async () => {
    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    const before = randomBytes(2 * MiB);
    await api.write(vol.volumeId, 0, before);

    const created = await sledge(['snapshot', 'create', vol.volumeId, '--name', 'before upgrade', '--api', url]);
    expect(created.code, describeRun('sledge snapshot create', created)).toBe(0);
    expect(created.stderr).toBe('');
    const m = SNAPSHOT_LINE.exec(created.stdout.trimEnd());
    expect(m, created.stdout).not.toBeNull();
    const snapshotId = m![1]!;
    const described = (await http(`${url}/snapshots/${snapshotId}`)).json;
    expect(described).toMatchObject({ volumeId: vol.volumeId, name: 'before upgrade', sizeBytes: 8 * MiB, commitSeq: 1, state: 'ready' });
    expect(created.stdout).toBe(`${snapshotId}  commit 1  8 MiB  ${described.createdAt}  "before upgrade"\n`);

    // The volume moves on; a second snapshot, unnamed.
    await api.write(vol.volumeId, 0, randomBytes(MiB));
    const second = await sledge(['snapshot', 'create', vol.volumeId, '--api', url]);
    expect(second.code, describeRun('sledge snapshot create', second)).toBe(0);
    const secondId = SNAPSHOT_LINE.exec(second.stdout.trimEnd())![1]!;

    // A clone, larger than its snapshot, reads as the snapshot and zeros beyond it.
    const cloned = await sledge(['clone', snapshotId, '--size', '16MiB', '--name', 'test copy', '--api', url]);
    expect(cloned.code, describeRun('sledge clone', cloned)).toBe(0);
    const cloneId = /^(vol-[0-9a-f]+) /.exec(cloned.stdout)![1]!;
    expect(cloned.stdout).toBe(`${cloneId}  16 MiB  clone of ${snapshotId} (volume ${vol.volumeId})  "test copy"\n`);
    expect((await api.describe(cloneId)).json).toMatchObject({ sizeBytes: 16 * MiB, name: 'test copy', parent: { volumeId: vol.volumeId, snapshotId } });
    expect((await api.read(cloneId, 0, 4 * MiB)).equals(Buffer.concat([before, Buffer.alloc(2 * MiB)]))).toBe(true);
    expect((await api.read(cloneId, 8 * MiB, 4 * MiB)).equals(Buffer.alloc(4 * MiB))).toBe(true);

    // The list: one line per ready snapshot, in the API's order, the first naming its clone.
    const listed = await sledge(['snapshot', 'list', vol.volumeId, '--api', url]);
    expect(listed.code, describeRun('sledge snapshot list', listed)).toBe(0);
    const apiList = (await http(`${url}/volumes/${vol.volumeId}/snapshots`)).json.snapshots as Array<{ snapshotId: string; commitSeq: number; createdAt: string }>;
    expect(apiList.map((s) => s.snapshotId)).toEqual([snapshotId, secondId]);
    expect(listed.stdout).toBe(
      `${snapshotId}  commit 1  8 MiB  ${apiList[0]!.createdAt}  "before upgrade"  clones ${cloneId}\n` + `${secondId}  commit 2  8 MiB  ${apiList[1]!.createdAt}\n`,
    );

    // Deleting the one the clone reads through is refused, in one line naming the clone, and changes nothing.
    const refused = await sledge(['snapshot', 'delete', snapshotId, '--api', url]);
    expect({ code: refused.code, stdout: refused.stdout, stderr: refused.stderr }).toEqual({
      code: 1,
      stdout: '',
      stderr: `sledge: snapshot ${snapshotId} has dependants (${cloneId}); flatten or delete them first (409)\n`,
    });
    expect((await http(`${url}/snapshots/${snapshotId}`)).status).toBe(200);

    // The other goes at once for readers.
    const deleted = await sledge(['snapshot', 'delete', secondId, '--api', url]);
    expect(deleted.code, describeRun('sledge snapshot delete', deleted)).toBe(0);
    expect(deleted.stdout).toBe(`${secondId} deleted; a background job purges its frozen pages\n`);
    expect((await http(`${url}/snapshots/${secondId}`)).status).toBe(404);
    const after = await sledge(['snapshot', 'list', vol.volumeId, '--api', url]);
    expect(after.stdout.trimEnd().split('\n').map((l) => l.split('  ')[0])).toEqual([snapshotId]);

    // Once the clone is deleted, so can the first be; then the volume lists none.
    expect((await http(`${url}/volumes/${cloneId}`, { method: 'DELETE' })).status).toBe(202);
    const last = await sledge(['snapshot', 'delete', snapshotId, '--api', url]);
    expect(last.code, describeRun('sledge snapshot delete', last)).toBe(0);
    const none = await sledge(['snapshot', 'list', vol.volumeId, '--api', url]);
    expect({ code: none.code, stdout: none.stdout, stderr: none.stderr }).toEqual({ code: 0, stdout: '', stderr: '' });
  });

  it('reports bad input in one line: unknown volume or snapshot, a clone smaller than its snapshot, a fenced volume', async () => {
    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    await api.write(vol.volumeId, 0, randomBytes(64 * 1024));
    const s = (await http(`${url}/volumes/${vol.volumeId}/snapshots`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })).json;
    const missingSnap = `snap-${vol.volumeId.slice(4)}-000000000099-abcdef`;
    await expectCliErrors((args) => sledge([...args, '--api', url]), [
      { args: ['snapshot', 'create', 'vol-0000000000000000'], stderr: 'sledge: volume vol-0000000000000000 does not exist (404)\n' },
      { args: ['snapshot', 'list', 'vol-0000000000000000'], stderr: 'sledge: volume vol-0000000000000000 does not exist (404)\n' },
      { args: ['snapshot', 'delete', missingSnap], stderr: `sledge: snapshot ${missingSnap} does not exist (404)\n` },
      { args: ['clone', missingSnap], stderr: `sledge: snapshot ${missingSnap} does not exist (404)\n` },
      { args: ['clone', s.snapshotId, '--size', '4MiB'], stderr: `sledge: a clone is at least as large as its snapshot (${8 * MiB} bytes), not ${4 * MiB} (400)\n` },
      { args: ['clone', s.snapshotId, '--size', String(8 * MiB + 512)], stderr: `sledge: sizeBytes ${8 * MiB + 512} is not a multiple of the block size 4096 (400)\n` },
      { args: ['snapshot', 'create', vol.volumeId, '--name', ''], stderr: 'sledge: name must be a string of 1 to 128 characters (400)\n' },
    ]);
    // Nothing was made by the refused commands.
    expect((await http(`${url}/volumes/${vol.volumeId}/snapshots`)).json.snapshots.map((x: { snapshotId: string }) => x.snapshotId)).toEqual([s.snapshotId]);

    // A reserved volume: without the holder's key the snapshot is refused, saying how to give it; with it, taken.
    for (const body of [
      { action: 'register', key: 'gw-cli-test' },
      { action: 'reserve', key: 'gw-cli-test', type: 'write-exclusive' },
    ]) {
      const r = await http(`${url}/volumes/${vol.volumeId}/reservations`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
      expect(r.status, r.body.toString()).toBe(200);
    }
    const fenced = await sledge(['snapshot', 'create', vol.volumeId, '--api', url]);
    expect(fenced.code, describeRun('sledge snapshot create (fenced)', fenced)).toBe(1);
    expect(fenced.stdout).toBe('');
    expect(fenced.stderr.startsWith(`sledge: volume ${vol.volumeId} is reserved `), fenced.stderr).toBe(true);
    // The API's wording of the refusal is its own; the CLI's part is one line, the status and the --key hint.
    expect(fenced.stderr).toContain(' by key gw-cli-test; ');
    // Exactly the API's message for the same refusal, then the status and the hint, on one line.
    const refusal = await http(`${url}/volumes/${vol.volumeId}/snapshots`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(refusal.status).toBe(409);
    expect(fenced.stderr).toBe(`sledge: ${refusal.json.message} (409); give the reservation holder's key with --key\n`);
    expect(fenced.stderr.split('\n').length, fenced.stderr).toBe(2);
    const keyed = await sledge(['snapshot', 'create', vol.volumeId, '--key', 'gw-cli-test', '--api', url]);
    expect(keyed.code, describeRun('sledge snapshot create --key', keyed)).toBe(0);
    expect(keyed.stdout).toMatch(/^snap-\S+ {2}commit 1 {2}8 MiB {2}\S+\n$/);
  });

  it('sign with the profile given: the owner takes and lists snapshots, another tenant is told the volume does not exist', async () => {
    const owned = await new Api(url, { as: PROFILES.tenantA }).createVolume({ sizeBytes: 4 * MiB });
    const mine = await sledge(['snapshot', 'create', owned.volumeId, '--profile', PROFILES.tenantA, '--api', url]);
    expect(mine.code, describeRun('sledge snapshot create --profile tenant-a', mine)).toBe(0);
    const listed = await sledge(['snapshot', 'list', owned.volumeId, '--profile', PROFILES.tenantA, '--api', url]);
    expect(listed.code, describeRun('sledge snapshot list --profile tenant-a', listed)).toBe(0);
    expect(listed.stdout.trim().split('\n')).toHaveLength(1);
    const theirs = await sledge(['snapshot', 'create', owned.volumeId, '--profile', PROFILES.tenantB, '--api', url]);
    expect(theirs.code, describeRun('sledge snapshot create --profile tenant-b', theirs)).toBe(1);
    expect(theirs.stderr).toMatch(/404/);
    const both = await sledge(['flatten', owned.volumeId, '--profile', PROFILES.tenantA, '--unsigned', '--api', url]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('give either --profile or --unsigned, not both');
    expect((await pageMap().listSnapshots(owned.volumeId)).length).toBe(1);
  });

  it('refuses a wrong command line before sending anything, with the command\'s usage, exit 2', async () => {
    await expectUsageErrors(sledge, [
      { args: ['snapshot'], line: 'sledge snapshot needs a subcommand first: create, list, delete', usage: 'usage: sledge snapshot create ' },
      { args: ['snapshot', 'take', 'vol-1', '--api', url], line: 'unknown snapshot subcommand "take"; the subcommands are create, list, delete', usage: 'usage: sledge snapshot create ' },
      { args: ['snapshot', 'create', 'vol-1'], line: '--api <url> is required for sledge snapshot create', usage: 'usage: sledge snapshot create ' },
      { args: ['snapshot', 'delete', 'vol-1', '--api', url], line: 'vol-1 is a volume id; sledge snapshot delete takes a snapshot id (`sledge snapshot list vol-1` lists the volume\'s)', usage: 'usage: sledge snapshot create ' },
      { args: ['clone', 'snap-1', '--size', '1.5GiB', '--api', url], line: '--size must be a positive number of bytes, or of KiB, MiB, GiB or TiB (e.g. 8GiB), got "1.5GiB"', usage: 'usage: sledge clone ' },
      { args: ['clone', 'snap-1', '--force', '--api', url], line: "Unknown option '--force'", usage: 'usage: sledge clone ' },
    ]);
  });
});
