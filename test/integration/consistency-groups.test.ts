import { describe, expect, it } from 'vitest';
import { pageMap } from '#shared/ports.ts';
import { Api, PROFILES, http, testApi } from './helpers.ts';
import { PLAIN_ENV } from './cli-tools.ts';
import { describeRun, run, SLEDGE_BIN } from './nbd-tools.ts';

/**
 * Consistency groups through the API (docs/consistency-groups.md): create, describe, change and
 * delete a group; take, list, read and delete group snapshots; bad input, each answered with
 * its status and changing nothing.
 */
const BLOCK = 4096;
const MiB = 1024 * 1024;

const { api, apiUrl: url } = testApi({ sledgeEnv: true });

const json = (body: unknown) => ({ body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
const post = (path: string, body: unknown, as?: (typeof PROFILES)[keyof typeof PROFILES]) =>
  http(`${url}${path}`, { method: 'POST', ...json(body), ...(as ? { as } : {}) });
const patch = (path: string, body: unknown) => http(`${url}${path}`, { method: 'PATCH', ...json(body) });

async function volume(client: Api = api): Promise<string> {
  return (await client.createVolume({ sizeBytes: MiB })).volumeId;
}

async function group(volumeIds: string[], as?: (typeof PROFILES)[keyof typeof PROFILES]): Promise<any> {
  const r = await post('/consistency-groups', { name: 'g', volumeIds }, as);
  expect(r.status, r.body.toString()).toBe(201);
  return r.json;
}

async function groupIdOf(volumeId: string): Promise<string | undefined> {
  return (await pageMap().getVolume(volumeId))?.groupId;
}

describe('consistency groups', () => {
  it('creates, describes, changes and deletes a group; a volume is in one group', async () => {
    const [a, b, c] = [await volume(), await volume(), await volume()];
    const g = await group([a, b]);
    expect(g.groupId).toMatch(/^cg-[0-9a-f]{16}$/);
    expect(g.volumeIds).toEqual([a, b]);
    expect((await http(`${url}/consistency-groups/${g.groupId}`)).json.volumeIds).toEqual([a, b]);
    expect((await api.describe(a)).json.groupId).toBe(g.groupId);

    // A volume already in a group: 409, and nothing changes (c stays out of every group).
    const taken = await post('/consistency-groups', { name: 'h', volumeIds: [c, a] });
    expect(taken.status, taken.body.toString()).toBe(409);
    expect(await groupIdOf(c)).toBeUndefined();

    const changed = await patch(`/consistency-groups/${g.groupId}`, { add: [c], remove: [a] });
    expect(changed.status, changed.body.toString()).toBe(200);
    expect(changed.json.volumeIds).toEqual([b, c]);
    expect(await groupIdOf(a)).toBeUndefined();
    expect(await groupIdOf(c)).toBe(g.groupId);

    // A member cannot be deleted; a volume that left can.
    expect((await http(`${url}/volumes/${c}`, { method: 'DELETE' })).status).toBe(409);
    const del = await http(`${url}/consistency-groups/${g.groupId}`, { method: 'DELETE' });
    expect(del.status, del.body.toString()).toBe(200);
    expect((await http(`${url}/consistency-groups/${g.groupId}`)).status).toBe(404);
    expect(await groupIdOf(b)).toBeUndefined();
    expect(await groupIdOf(c)).toBeUndefined();
  });

  it('refuses bad input with a clear status and changes nothing', async () => {
    const [a, b] = [await volume(), await volume()];
    const unknown = 'vol-00000000000000ff';
    const cases: Array<[unknown, number]> = [
      [{ name: 'g', volumeIds: [a, unknown] }, 404],
      [{ name: 'g', volumeIds: [] }, 400],
      [{ name: 'g', volumeIds: [a, a] }, 400],
      [{ name: 'g', volumeIds: Array.from({ length: 65 }, (_, i) => `vol-${String(i).padStart(16, '0')}`) }, 400],
      [{ name: 'g', volumeIds: [a], extra: 1 }, 400],
      [{ volumeIds: [a] }, 400],
      [{ name: 'g', volumeIds: 'vol-x' }, 400],
    ];
    for (const [body, status] of cases) {
      const r = await post('/consistency-groups', body);
      expect(r.status, `${JSON.stringify(body).slice(0, 80)}: ${r.body.toString()}`).toBe(status);
    }
    const malformed = await http(`${url}/consistency-groups`, { method: 'POST', body: '{', headers: { 'content-type': 'application/json' } });
    expect(malformed.status).toBe(400);
    expect(await groupIdOf(a)).toBeUndefined();
    expect(await groupIdOf(b)).toBeUndefined();

    // Different owners: 403 (an operator groups a tenant's volume with its own).
    const tenantA = new Api(url, { as: PROFILES.tenantA });
    const t = await volume(tenantA);
    const mixed = await post('/consistency-groups', { name: 'g', volumeIds: [a, t] });
    expect(mixed.status, mixed.body.toString()).toBe(403);
    expect(await groupIdOf(t)).toBeUndefined();
    // A tenant naming another tenant's volume: it reads as missing.
    const other = await post('/consistency-groups', { name: 'g', volumeIds: [t, a] }, PROFILES.tenantA);
    expect(other.status, other.body.toString()).toBe(404);
    // A tenant's own group is its own; another tenant cannot see it.
    const mine = await group([t], PROFILES.tenantA);
    expect((await http(`${url}/consistency-groups/${mine.groupId}`, { as: PROFILES.tenantB })).status).toBe(404);
    expect((await http(`${url}/consistency-groups/${mine.groupId}/snapshots`, { method: 'POST', as: PROFILES.tenantB })).status).toBe(404);

    // Changes: unknown ids, members twice, non-members, over the limit.
    const g = await group([a]);
    const patches: Array<[unknown, number]> = [
      [{ add: [unknown] }, 404],
      [{ add: [t] }, 403],
      [{ add: [a] }, 400],
      [{ remove: [b] }, 400],
      [{ remove: [a] }, 400], // the last member
      [{}, 400],
      [{ add: [b], remove: [b] }, 400],
      [{ rename: 'x' }, 400],
    ];
    for (const [body, status] of patches) {
      const r = await patch(`/consistency-groups/${g.groupId}`, body);
      expect(r.status, `${JSON.stringify(body)}: ${r.body.toString()}`).toBe(status);
    }
    expect((await http(`${url}/consistency-groups/${g.groupId}`)).json.volumeIds).toEqual([a]);
    expect(await groupIdOf(b)).toBeUndefined();
    expect((await http(`${url}/consistency-groups/cg-nope`)).status).toBe(404);
    expect((await http(`${url}/consistency-groups/${g.groupId}/snapshots/gsnap-nope`)).status).toBe(404);
  });

  it('takes group snapshots that read as the members did, lists, reads and deletes them', async () => {
    const [a, b] = [await volume(), await volume()];
    await api.write(a, 0, Buffer.alloc(BLOCK, 1));
    await api.write(b, BLOCK, Buffer.alloc(BLOCK, 2));
    const g = await group([a, b]);
    const taken = await http(`${url}/consistency-groups/${g.groupId}/snapshots`, { method: 'POST' });
    expect(taken.status, taken.body.toString()).toBe(201);
    const gs = taken.json;
    expect(gs.snapshots.map((s: any) => s.volumeId)).toEqual([a, b]);
    await api.write(a, 0, Buffer.alloc(BLOCK, 3));

    const snapA = gs.snapshots[0].snapshotId;
    const readA = await http(`${url}/snapshots/${snapA}/data?offset=0&length=${BLOCK}`);
    expect(readA.status).toBe(200);
    expect(readA.body.equals(Buffer.alloc(BLOCK, 1))).toBe(true);
    const snapB = gs.snapshots[1].snapshotId;
    expect((await http(`${url}/snapshots/${snapB}/data?offset=${BLOCK}&length=${BLOCK}`)).body.equals(Buffer.alloc(BLOCK, 2))).toBe(true);
    // Each member is an ordinary snapshot of its volume.
    expect((await http(`${url}/volumes/${a}/snapshots`)).json.snapshots.map((s: any) => s.snapshotId)).toContain(snapA);

    const list = await http(`${url}/consistency-groups/${g.groupId}/snapshots`);
    expect(list.json.groupSnapshots.map((s: any) => s.groupSnapshotId)).toEqual([gs.groupSnapshotId]);
    const one = await http(`${url}/consistency-groups/${g.groupId}/snapshots/${gs.groupSnapshotId}`);
    expect(one.json.snapshots).toEqual(gs.snapshots);

    // A group with group snapshots cannot be deleted; deleting the group snapshot deletes its members.
    expect((await http(`${url}/consistency-groups/${g.groupId}`, { method: 'DELETE' })).status).toBe(409);
    const del = await http(`${url}/consistency-groups/${g.groupId}/snapshots/${gs.groupSnapshotId}`, { method: 'DELETE' });
    expect(del.status, del.body.toString()).toBe(202);
    expect((await http(`${url}/snapshots/${snapA}`)).status).toBe(404);
    expect((await http(`${url}/snapshots/${snapB}`)).status).toBe(404);
    expect((await http(`${url}/consistency-groups/${g.groupId}/snapshots`)).json.groupSnapshots).toEqual([]);
    expect((await http(`${url}/consistency-groups/${g.groupId}`, { method: 'DELETE' })).status).toBe(200);
  });

  it('refuses to delete a group snapshot a clone reads through, changing nothing', async () => {
    const [a, b] = [await volume(), await volume()];
    const g = await group([a, b]);
    const gs = (await http(`${url}/consistency-groups/${g.groupId}/snapshots`, { method: 'POST' })).json;
    const clone = await api.createVolume({ sourceSnapshotId: gs.snapshots[1].snapshotId });
    const del = await http(`${url}/consistency-groups/${g.groupId}/snapshots/${gs.groupSnapshotId}`, { method: 'DELETE' });
    expect(del.status, del.body.toString()).toBe(409);
    for (const s of gs.snapshots) expect((await http(`${url}/snapshots/${s.snapshotId}`)).json.state).toBe('ready');
    expect((await http(`${url}/consistency-groups/${g.groupId}/snapshots/${gs.groupSnapshotId}`)).status).toBe(200);
    expect((await http(`${url}/volumes/${clone.volumeId}`, { method: 'DELETE' })).status).toBe(202);
  });

  it('is driven by the CLI: sledge group create, snapshot, snapshots, delete-snapshot, delete', async () => {
    const sledge = async (args: string[]) => {
      const r = await run(process.execPath, [SLEDGE_BIN, 'group', ...args, '--api', url], { env: PLAIN_ENV });
      expect(r.code, describeRun(`sledge group ${args[0]}`, r)).toBe(0);
      return r.stdout.trim();
    };
    const [a, b] = [await volume(), await volume()];
    const created = await sledge(['create', 'cli', a, b]);
    const groupId = /^(cg-[0-9a-f]{16}) {2}"cli" {2}(\S+) (\S+)$/.exec(created);
    expect(groupId, created).not.toBeNull();
    expect([groupId![2], groupId![3]]).toEqual([a, b]);
    const taken = await sledge(['snapshot', groupId![1]!]);
    const gs = /^(gsnap-[0-9a-f]{16}-[0-9a-f]{8}) {2}ready {2}\S+ {2}(\S+) (\S+)$/.exec(taken);
    expect(gs, taken).not.toBeNull();
    expect(gs![2]).toMatch(new RegExp(`^${a}=snap-`));
    expect(await sledge(['snapshots', groupId![1]!])).toBe(taken);
    expect(await sledge(['delete-snapshot', groupId![1]!, gs![1]!])).toBe(`${gs![1]} deleted with its member snapshots`);
    expect(await sledge(['delete', groupId![1]!])).toBe(`${groupId![1]} deleted; its volumes are in no group`);
    expect(await groupIdOf(a)).toBeUndefined();
  });
});
