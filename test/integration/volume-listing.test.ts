import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { pageMap } from '#shared/ports.ts';
import { Api, PROFILES, http, testApi, walkList, type ProfileName } from './helpers.ts';

/**
 * The page-map side's lists, paged with `limit` and `next` as the vault's lists are
 * (backup-listing.test.ts): `GET /volumes`, `GET /volumes/{id}/snapshots` and
 * `GET /consistency-groups/{id}/snapshots`. Walked page by page through the API against the local
 * endpoint, every entry is listed once (snapshots and group snapshots in id order); a `limit`
 * that is not a plain decimal integer from 1 to 1000, or a `next` that no answer of that list
 * could have given (garbled, an id of another kind, another volume's snapshot, another group's
 * group snapshot), is a 400 that says what was wrong, before anything is read, and changes
 * nothing; a `next` naming an entry deleted since goes on after it. `changed-blocks` takes its
 * `limit` and `next` in plain decimal too.
 */
const MiB = 1024 * 1024;
const BLOCK = 4096;
/** Entries made of each kind: more than one page of LIMIT. */
const MADE = 5;
const LIMIT = 2;

const { apiUrl: url } = testApi({ sledgeEnv: true });
const tenantA = new Api(url, { as: PROFILES.tenantA });
const tenantB = new Api(url, { as: PROFILES.tenantB });

const json = (body: unknown) => ({ body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

/** Reads `path` page by page with `limit` (and `start` as the first `next`): `walkList` against this file's API. */
const walk = (path: string, key: string, idKey: string, limit: number | undefined, as: ProfileName = PROFILES.operator, start?: string) =>
  walkList(url, path, key, idKey, limit, as, start);

const walkVolumes = (limit: number | undefined, as: ProfileName = PROFILES.operator, start?: string) => walk('/volumes', 'volumes', 'volumeId', limit, as, start);

/** Each of `mine` appears in `listed` exactly once. */
function expectEachOnce(listed: readonly string[], mine: readonly string[]): void {
  for (const id of mine) expect(listed.filter((x) => x === id), `${id} in ${listed.join(' ')}`).toHaveLength(1);
}

/** Polls until the volume item is gone (its reclaim finished). */
async function volumeGone(volumeId: string): Promise<void> {
  for (let i = 0; i < 600 && (await pageMap().getVolume(volumeId)) !== null; i++) await new Promise((resolve) => setTimeout(resolve, 100));
  expect(await pageMap().getVolume(volumeId)).toBeNull();
}

// What the fixtures made.
/** Tenant A's plain volumes (no snapshots, no group), in the order made. */
let plain: string[];
/** Tenant A's volume with MADE snapshots (`snapshotIds`, oldest first). */
let volumeId: string;
let snapshotIds: string[];
/** Tenant A's group of two volumes, with MADE group snapshots (`groupSnapshotIds`, in the order taken). */
let groupId: string;
let members: string[];
let groupSnapshotIds: string[];
/** Tenant B's volume (with one snapshot) in a group of its own (with one group snapshot). */
let theirVolume: string;
let theirSnapshot: string;
let theirGroup: string;
let theirGroupSnapshot: string;

async function takeSnapshot(client: Api, id: string): Promise<string> {
  const r = await client.http(`${url}/volumes/${id}/snapshots`, { method: 'POST', ...json({}) });
  expect(r.status, r.body.toString()).toBe(201);
  return r.json.snapshotId;
}

async function makeGroup(client: Api, volumeIds: string[]): Promise<string> {
  const r = await client.http(`${url}/consistency-groups`, { method: 'POST', ...json({ name: 'listed', volumeIds }) });
  expect(r.status, r.body.toString()).toBe(201);
  return r.json.groupId;
}

async function takeGroupSnapshot(client: Api, id: string): Promise<string> {
  const r = await client.http(`${url}/consistency-groups/${id}/snapshots`, { method: 'POST' });
  expect(r.status, r.body.toString()).toBe(201);
  return r.json.groupSnapshotId;
}

beforeAll(async () => {
  plain = [];
  for (let i = 0; i < 3; i++) plain.push((await tenantA.createVolume({ sizeBytes: MiB })).volumeId);
  volumeId = (await tenantA.createVolume({ sizeBytes: MiB })).volumeId;
  snapshotIds = [];
  for (let i = 0; i < MADE; i++) {
    await tenantA.write(volumeId, i * BLOCK, randomBytes(BLOCK));
    snapshotIds.push(await takeSnapshot(tenantA, volumeId));
  }
  members = [(await tenantA.createVolume({ sizeBytes: MiB })).volumeId, (await tenantA.createVolume({ sizeBytes: MiB })).volumeId];
  groupId = await makeGroup(tenantA, members);
  groupSnapshotIds = [];
  for (let i = 0; i < MADE; i++) groupSnapshotIds.push(await takeGroupSnapshot(tenantA, groupId));

  theirVolume = (await tenantB.createVolume({ sizeBytes: MiB })).volumeId;
  theirSnapshot = await takeSnapshot(tenantB, theirVolume);
  theirGroup = await makeGroup(tenantB, [(await tenantB.createVolume({ sizeBytes: MiB })).volumeId]);
  theirGroupSnapshot = await takeGroupSnapshot(tenantB, theirGroup);
});

describe('the page-map lists, walked page by page with limit and next', () => {
  it('list volumes each once, a tenant only its own', async () => {
    const mine = [...plain, volumeId, ...members];
    const all = await walkVolumes(LIMIT);
    expectEachOnce(all.ids, [...mine, theirVolume]);
    const ofA = await walkVolumes(LIMIT, PROFILES.tenantA);
    expectEachOnce(ofA.ids, mine);
    expect(ofA.ids).not.toContain(theirVolume);
    expectEachOnce((await walkVolumes(1, PROFILES.tenantA)).ids, mine);
    expectEachOnce((await walkVolumes(undefined, PROFILES.tenantA)).ids, mine);
    // Any volume id is a place to start after, even another tenant's: the page holds the
    // caller's own volumes after that id, and nothing else.
    const afterTheirs = await walkVolumes(1000, PROFILES.tenantA, theirVolume);
    expect(afterTheirs.ids.filter((id) => id <= theirVolume || !ofA.ids.includes(id))).toEqual([]);
    expectEachOnce(afterTheirs.ids, mine.filter((id) => id > theirVolume));
  });

  it("give a tenant full pages whose next is always one of its own volumes, never another tenant's", async () => {
    // Other test files share this control plane and may make or delete volumes meanwhile, so
    // ownership is checked on each next itself.
    const ownerOf = async (id: string) => (await pageMap().getVolume(id))?.owner;
    const owners = { [PROFILES.tenantA]: await ownerOf(volumeId), [PROFILES.tenantB]: await ownerOf(theirVolume) };
    expect(owners[PROFILES.tenantA]).toBeDefined();
    expect(owners[PROFILES.tenantB]).toBeDefined();
    expect(owners[PROFILES.tenantA]).not.toBe(owners[PROFILES.tenantB]);
    for (const [as, own] of [
      [PROFILES.tenantA, [...plain, volumeId, ...members]],
      [PROFILES.tenantB, [theirVolume]],
    ] as const) {
      for (const limit of [1, LIMIT]) {
        const w = await walkVolumes(limit, as);
        expectEachOnce(w.ids, own);
        // Every page but the last is full, and every next names a volume of the caller's.
        expect(w.pages.slice(0, -1).every((n) => n === limit), `${as} pages ${w.pages.join(' ')}`).toBe(true);
        for (const next of w.nexts) expect(await ownerOf(next), `${as}'s next ${next}`).toBe(owners[as]);
      }
    }
  });

  it("list a volume's snapshots, oldest first, each once", async () => {
    const path = `/volumes/${volumeId}/snapshots`;
    expect(await walk(path, 'snapshots', 'snapshotId', LIMIT, PROFILES.tenantA)).toMatchObject({ ids: snapshotIds, pages: [2, 2, 1], nexts: [snapshotIds[1], snapshotIds[3]] });
    expect(await walk(path, 'snapshots', 'snapshotId', 1000)).toEqual({ ids: snapshotIds, pages: [MADE], nexts: [] });
    expect(await walk(path, 'snapshots', 'snapshotId', undefined)).toEqual({ ids: snapshotIds, pages: [MADE], nexts: [] });
  });

  it("list a group's group snapshots in id order, each once and as GET describes it", async () => {
    const path = `/consistency-groups/${groupId}/snapshots`;
    const sorted = [...groupSnapshotIds].sort();
    expect(await walk(path, 'groupSnapshots', 'groupSnapshotId', LIMIT, PROFILES.tenantA)).toMatchObject({ ids: sorted, pages: [2, 2, 1], nexts: [sorted[1], sorted[3]] });
    expect(await walk(path, 'groupSnapshots', 'groupSnapshotId', 1000)).toEqual({ ids: sorted, pages: [MADE], nexts: [] });
    expect(await walk(path, 'groupSnapshots', 'groupSnapshotId', undefined)).toEqual({ ids: sorted, pages: [MADE], nexts: [] });
    const first = await http(`${url}${path}?limit=1`, { as: PROFILES.tenantA });
    expect(first.json.groupSnapshots).toEqual([(await http(`${url}${path}/${sorted[0]}`, { as: PROFILES.tenantA })).json]);
    expect(first.json.next).toBe(sorted[0]);
    // Another tenant's group is missing to it, paged or not.
    expect((await http(`${url}${path}?limit=1`, { as: PROFILES.tenantB })).status).toBe(404);
  });

  it('refuse a bad limit or a garbled or foreign next with a clear 400, and change nothing', async () => {
    const volumes = '/volumes';
    const snapshots = `/volumes/${volumeId}/snapshots`;
    const groupSnapshots = `/consistency-groups/${groupId}/snapshots`;
    const lists: Array<[string, string, string]> = [
      [volumes, 'volumes', 'volumeId'],
      [snapshots, 'snapshots', 'snapshotId'],
      [groupSnapshots, 'groupSnapshots', 'groupSnapshotId'],
    ];
    const state = async () => ({
      changed: (await http(`${url}/snapshots/${snapshotIds[0]}/changed-blocks?limit=10000&next=0`)).json,
      walks: await Promise.all(lists.slice(1).map(([path, key, idKey]) => walk(path, key, idKey, 1000))),
      volumes: (await walkVolumes(1000, PROFILES.tenantA)).ids.filter((id) => [...plain, volumeId, ...members].includes(id)).sort(),
      // What a request could change (a fold the snapshots queued may still move foldedSeq and updatedAt).
      described: await Promise.all(
        [...plain, volumeId, ...members].map(async (id) => {
          const v = (await tenantA.describe(id)).json;
          return { volumeId: v.volumeId, state: v.state, commitSeq: v.commitSeq, sizeBytes: v.sizeBytes, groupId: v.groupId };
        }),
      ),
    });
    const before = await state();

    const refused: Array<[string, RegExp]> = [];
    for (const [path] of lists) {
      for (const limit of ['0', '1001', '-1', '1.5', 'ten', '', '1e3', '0x10', '1e3x', '+5', ' 5', '10.0', '0b1']) {
        refused.push([`${path}?limit=${encodeURIComponent(limit)}`, /^limit must be an integer from 1 to 1000, got /]);
      }
    }
    const listing = (list: string, token: string) =>
      new RegExp(`^next must be a token from an earlier answer listing ${list}, got "${token.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"$`);
    const nexts: Array<[string, string, string[]]> = [
      [volumes, 'volumes', ['garbage', 'vol-nope', '../../etc', 'VOL-0123456789ABCDEF', snapshotIds[1]!, groupId, groupSnapshotIds[1]!, `${volumeId}x`]],
      [
        snapshots,
        `the snapshots of ${volumeId}`,
        ['garbage', 'snap-nope', volumeId, groupSnapshotIds[1]!, theirSnapshot, `snap-${'0'.repeat(16)}-000000000001-000000`, `${snapshotIds[1]}x`],
      ],
      [
        groupSnapshots,
        `the group snapshots of ${groupId}`,
        ['garbage', 'gsnap-nope', groupId, snapshotIds[1]!, theirGroupSnapshot, `gsnap-${'0'.repeat(16)}-00000000`, `${groupSnapshotIds[1]}x`],
      ],
    ];
    // Members' snapshots belong to their own volumes, not to the group's list.
    const memberSnapshot = (await http(`${url}${groupSnapshots}/${groupSnapshotIds[1]}`)).json.snapshots[0].snapshotId as string;
    nexts[2]![2].push(memberSnapshot);
    for (const [path, list, tokens] of nexts) for (const token of tokens) refused.push([`${path}?next=${encodeURIComponent(token)}`, listing(list, token)]);
    for (const [path, list] of nexts) refused.push([`${path}?limit=1&next=${'x'.repeat(300)}`, new RegExp(`listing ${list}, got "${'x'.repeat(100)}\\.\\.\\."$`)]);
    // Changed blocks take their limit (1 to 10000) and their next (a byte offset) in plain decimal too.
    const changed = `/snapshots/${snapshotIds[0]}/changed-blocks`;
    for (const limit of ['0', '10001', '1e3', '0x10', '+5', ' 5', '10.0']) {
      refused.push([`${changed}?limit=${encodeURIComponent(limit)}`, /^limit must be an integer from 1 to 10000, got /]);
    }
    for (const next of ['0x1000', '4096.0', '4.096e3', '+4096', '-4096', 'garbage', '4097']) {
      refused.push([`${changed}?next=${encodeURIComponent(next)}`, /^next must be a token from an earlier answer, got /]);
    }

    for (const [path, message] of refused) {
      for (const as of [PROFILES.operator, PROFILES.tenantA]) {
        const r = await http(`${url}${path}`, { as });
        expect(r.status, `${path} as ${as} -> ${r.body.toString().slice(0, 300)}`).toBe(400);
        expect(r.json.error).toBe('InvalidInputError');
        expect(r.json.message, path).toMatch(message);
        expect(r.json.retryable).toBe(false);
      }
    }
    // Tenant B's bad tokens on its own list are refused the same way.
    const theirs = await http(`${url}/volumes?next=garbage`, { as: PROFILES.tenantB });
    expect(theirs.status, theirs.body.toString()).toBe(400);
    expect(theirs.json.message).toMatch(listing('volumes', 'garbage'));

    // Nothing changed: every list walks as before, and the volumes are as they were.
    expect(await state()).toEqual(before);
  });

  it('go on from a next whose entry was deleted meanwhile, listing the rest once', async () => {
    // Snapshots: the token names the second, deleted before the next page is asked for.
    const snapshots = `/volumes/${volumeId}/snapshots`;
    const first = await http(`${url}${snapshots}?limit=${LIMIT}`, { as: PROFILES.tenantA });
    expect(first.status, first.body.toString()).toBe(200);
    expect(first.json.snapshots.map((s: any) => s.snapshotId)).toEqual(snapshotIds.slice(0, 2));
    expect(first.json.next).toBe(snapshotIds[1]);
    expect((await http(`${url}/snapshots/${snapshotIds[1]}`, { method: 'DELETE', as: PROFILES.tenantA })).status).toBe(202);
    expect((await http(`${url}/snapshots/${snapshotIds[1]}`, { as: PROFILES.tenantA })).status).toBe(404);
    expect((await walk(snapshots, 'snapshots', 'snapshotId', LIMIT, PROFILES.tenantA, first.json.next)).ids).toEqual(snapshotIds.slice(2));
    expect((await walk(snapshots, 'snapshots', 'snapshotId', LIMIT, PROFILES.tenantA)).ids).toEqual([snapshotIds[0], ...snapshotIds.slice(2)]);

    // Group snapshots: the same.
    const groupSnapshots = `/consistency-groups/${groupId}/snapshots`;
    const sorted = [...groupSnapshotIds].sort();
    const firstGroup = await http(`${url}${groupSnapshots}?limit=${LIMIT}`, { as: PROFILES.tenantA });
    expect(firstGroup.status, firstGroup.body.toString()).toBe(200);
    expect(firstGroup.json.next).toBe(sorted[1]);
    expect((await http(`${url}${groupSnapshots}/${sorted[1]}`, { method: 'DELETE', as: PROFILES.tenantA })).status).toBe(202);
    expect((await http(`${url}${groupSnapshots}/${sorted[1]}`, { as: PROFILES.tenantA })).status).toBe(404);
    expect((await walk(groupSnapshots, 'groupSnapshots', 'groupSnapshotId', LIMIT, PROFILES.tenantA, firstGroup.json.next)).ids).toEqual(sorted.slice(2));

    // Volumes: walk tenant A's list a volume at a time up to a page holding one of its plain
    // volumes (whose next is that volume), delete it, and go on once its item is gone.
    const seen: string[] = [];
    let token: string | undefined;
    let next: string | undefined;
    let pages = 0;
    do {
      expect(pages++, 'the walk did not end').toBeLessThan(100_000);
      const r = await http(`${url}/volumes?limit=1${next === undefined ? '' : `&next=${encodeURIComponent(next)}`}`, { as: PROFILES.tenantA });
      expect(r.status, r.body.toString()).toBe(200);
      const ids = r.json.volumes.map((v: any) => v.volumeId as string);
      seen.push(...ids);
      next = r.json.next;
      if (ids.some((id: string) => plain.includes(id))) token = next;
    } while (token === undefined && next !== undefined);
    const deleted = seen.find((id) => plain.includes(id))!;
    expect(token, `the page of ${deleted} has a next`).toBe(deleted);
    expect((await tenantA.http(`${url}/volumes/${deleted}`, { method: 'DELETE' })).status).toBe(202);
    await volumeGone(deleted);
    const rest = await walkVolumes(1, PROFILES.tenantA, token);
    expect(rest.ids).not.toContain(deleted);
    expectEachOnce([...seen, ...rest.ids], [...plain, volumeId, ...members]);
  });
});
