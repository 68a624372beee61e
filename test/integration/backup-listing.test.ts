import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { PROFILES, http, testApi, walkList, type ProfileName } from './helpers.ts';
import { MiB, json, snapshot, waitState } from './backup-helpers.ts';

/**
 * The vault's lists (docs/backup.md, "Listing without a volume": `GET /backups`, `GET /restores`,
 * `GET /group-backups`, `GET /group-restores`) are paged as `GET /volumes` is: walked page by page
 * with `limit` and `next`, through the API against the local endpoint and the vault's own
 * endpoint process, every entry is listed exactly once and in order; a bad `limit` or `next` is a
 * 400 that says what was wrong, and changes nothing.
 */
const BLOCK = 4096;
/** Entries made of each kind: more than one page of LIMIT. */
const MADE = 5;
const LIMIT = 2;

const { api, apiUrl: url } = testApi({ sledgeEnv: true });

/** Reads `path` (which may hold a filter) page by page with `limit` (`walkList`): the ids, and how many entries each page held. */
async function walk(path: string, key: string, idKey: string, limit: number | undefined, as: ProfileName = PROFILES.operator): Promise<{ ids: string[]; pages: number[] }> {
  const { ids, pages } = await walkList(url, path, key, idKey, limit, as);
  return { ids, pages };
}

/** `listed` is in id order (oldest first), each entry once, and holds `mine` once each, in their order. */
function expectOnceInOrder(listed: string[], mine: string[]): void {
  expect(new Set(listed).size, `an entry listed twice: ${listed.join(' ')}`).toBe(listed.length);
  for (let i = 1; i < listed.length; i++) expect(listed[i - 1]! < listed[i]!, `${listed[i - 1]} listed before ${listed[i]}`).toBe(true);
  expect(listed.filter((id) => mine.includes(id))).toEqual(mine);
}

/** What the fixtures made, each kind in the order it was made (so, oldest first). */
let volumeId: string;
let backupIds: string[];
let restores: Array<{ restoreId: string; volumeId: string }>;
let groupId: string;
let groupBackupIds: string[];
let groupRestoreIds: string[];

/** Polls each of `ids` at `/<kind>/<id>` until it is complete. */
async function allComplete(kind: string, ids: string[]): Promise<void> {
  for (const id of ids) {
    const done = await waitState(url, `/${kind}/${id}`, ['complete', 'failed']);
    expect(done.state, JSON.stringify(done)).toBe('complete');
  }
}

beforeAll(async () => {
  // MADE backups of one volume, each of its own snapshot, asked for one after another (ids begin
  // with the volume and the time: the list's order is the order they were made in).
  const v = await api.createVolume({ sizeBytes: MiB });
  volumeId = v.volumeId;
  const snapshots: string[] = [];
  for (let i = 0; i < MADE; i++) {
    await api.write(volumeId, i * BLOCK, randomBytes(BLOCK));
    snapshots.push((await snapshot(url, volumeId)).snapshotId);
  }
  backupIds = [];
  for (const snapshotId of snapshots) {
    const r = await http(`${url}/volumes/${volumeId}/backups`, { method: 'POST', ...json({ snapshotId }) });
    expect(r.status, r.body.toString()).toBe(202);
    backupIds.push(r.json.backupId);
  }
  await allComplete('backups', backupIds);

  // MADE restores of the first backup.
  restores = [];
  for (let i = 0; i < MADE; i++) {
    const r = await http(`${url}/restores`, { method: 'POST', ...json({ backupId: backupIds[0] }) });
    expect(r.status, r.body.toString()).toBe(202);
    restores.push({ restoreId: r.json.restoreId, volumeId: r.json.volumeId });
  }
  await allComplete('restores', restores.map((r) => r.restoreId));

  // A group of two volumes: MADE group backups, each of its own group snapshot, and MADE group restores of the first.
  const members = [await api.createVolume({ sizeBytes: MiB }), await api.createVolume({ sizeBytes: MiB })];
  for (const m of members) await api.write(m.volumeId, 0, randomBytes(BLOCK));
  const g = await http(`${url}/consistency-groups`, { method: 'POST', ...json({ name: 'listed', volumeIds: members.map((m) => m.volumeId) }) });
  expect(g.status, g.body.toString()).toBe(201);
  groupId = g.json.groupId;
  groupBackupIds = [];
  for (let i = 0; i < MADE; i++) {
    const gs = await http(`${url}/consistency-groups/${groupId}/snapshots`, { method: 'POST' });
    expect(gs.status, gs.body.toString()).toBe(201);
    const b = await http(`${url}/consistency-groups/${groupId}/snapshots/${gs.json.groupSnapshotId}/backups`, { method: 'POST' });
    expect(b.status, b.body.toString()).toBe(202);
    groupBackupIds.push(b.json.groupBackupId);
  }
  await allComplete('group-backups', groupBackupIds);
  groupRestoreIds = [];
  for (let i = 0; i < MADE; i++) {
    const r = await http(`${url}/group-restores`, { method: 'POST', ...json({ groupBackupId: groupBackupIds[0] }) });
    expect(r.status, r.body.toString()).toBe(202);
    groupRestoreIds.push(r.json.groupRestoreId);
  }
  await allComplete('group-restores', groupRestoreIds);
});

describe('the vault lists, walked page by page with limit and next', () => {
  it("list a volume's backups, and every backup, each once and in order", async () => {
    const byVolume = await walk(`/backups?volumeId=${volumeId}`, 'backups', 'backupId', LIMIT);
    expect(byVolume.ids).toEqual(backupIds);
    expect(byVolume.pages).toEqual([2, 2, 1]);
    // One page when it holds them all; the default limit is 100.
    expect(await walk(`/backups?volumeId=${volumeId}`, 'backups', 'backupId', 1000)).toEqual({ ids: backupIds, pages: [MADE] });
    expect(await walk(`/backups?volumeId=${volumeId}`, 'backups', 'backupId', undefined)).toEqual({ ids: backupIds, pages: [MADE] });
    // Each entry as GET /backups/{id} describes it.
    const first = await http(`${url}/backups?volumeId=${volumeId}&limit=1`);
    expect(first.json.backups).toEqual([(await http(`${url}/backups/${backupIds[0]}`)).json]);
    expect(typeof first.json.next).toBe('string');

    const all = await walk('/backups', 'backups', 'backupId', LIMIT);
    expectOnceInOrder(all.ids, backupIds);
    // Another tenant's walk ends, and holds none of them.
    const theirs = await walk('/backups', 'backups', 'backupId', 1, PROFILES.tenantB);
    expect(theirs.ids.filter((id) => backupIds.includes(id))).toEqual([]);
  });

  it('list restores, filtered or not, each once and oldest first', async () => {
    const ids = restores.map((r) => r.restoreId);
    const ofBackup = await walk(`/restores?backupId=${backupIds[0]}`, 'restores', 'restoreId', LIMIT);
    expect(ofBackup.ids).toEqual(ids);
    expect(ofBackup.pages).toEqual([2, 2, 1]);
    expect((await walk(`/restores?volumeId=${restores[3]!.volumeId}`, 'restores', 'restoreId', 1)).ids).toEqual([ids[3]]);
    expectOnceInOrder((await walk('/restores', 'restores', 'restoreId', LIMIT)).ids, ids);
    const first = await http(`${url}/restores?backupId=${backupIds[0]}&limit=1`);
    expect(first.json.restores).toEqual([(await http(`${url}/restores/${ids[0]}`)).json]);
    const theirs = await walk('/restores', 'restores', 'restoreId', 1, PROFILES.tenantB);
    expect(theirs.ids.filter((id) => ids.includes(id))).toEqual([]);
  });

  it('list group backups and group restores, filtered or not, each once and in order', async () => {
    const ofGroup = await walk(`/group-backups?groupId=${groupId}`, 'groupBackups', 'groupBackupId', LIMIT);
    expect(ofGroup.ids).toEqual(groupBackupIds);
    expect(ofGroup.pages).toEqual([2, 2, 1]);
    expectOnceInOrder((await walk('/group-backups', 'groupBackups', 'groupBackupId', LIMIT)).ids, groupBackupIds);

    const ofGroupBackup = await walk(`/group-restores?groupBackupId=${groupBackupIds[0]}`, 'groupRestores', 'groupRestoreId', LIMIT);
    expect(ofGroupBackup.ids).toEqual(groupRestoreIds);
    expect(ofGroupBackup.pages).toEqual([2, 2, 1]);
    expectOnceInOrder((await walk('/group-restores', 'groupRestores', 'groupRestoreId', LIMIT)).ids, groupRestoreIds);
    const first = await http(`${url}/group-restores?groupBackupId=${groupBackupIds[0]}&limit=1`);
    expect(first.json.groupRestores).toEqual([(await http(`${url}/group-restores/${groupRestoreIds[0]}`)).json]);
    expect(first.json.groupRestores[0]).toMatchObject({ groupBackupId: groupBackupIds[0], state: 'complete' });
  });

  it('refuse a bad limit or a garbled or foreign next with a clear 400, and change nothing', async () => {
    const lists: Array<[string, string, string]> = [
      [`/backups?volumeId=${volumeId}`, 'backups', 'backupId'],
      ['/backups', 'backups', 'backupId'],
      [`/restores?backupId=${backupIds[0]}`, 'restores', 'restoreId'],
      ['/restores', 'restores', 'restoreId'],
      [`/group-backups?groupId=${groupId}`, 'groupBackups', 'groupBackupId'],
      ['/group-backups', 'groupBackups', 'groupBackupId'],
      [`/group-restores?groupBackupId=${groupBackupIds[0]}`, 'groupRestores', 'groupRestoreId'],
      ['/group-restores', 'groupRestores', 'groupRestoreId'],
    ];
    const before = await Promise.all(lists.map(([path, key, idKey]) => walk(path, key, idKey, 1000)));
    const otherVolume = `vol-${'0'.repeat(16)}`;
    const otherGroup = `cg-${'0'.repeat(16)}`;
    const refused: Array<[string, RegExp]> = [];
    for (const [path] of lists) {
      const sep = path.includes('?') ? '&' : '?';
      // Out of range, or not a plain decimal integer (Number() takes 1e3, 0x10, +5, ' 5' and 10.0 as numbers in range).
      for (const limit of ['0', '1001', '-1', '1.5', 'ten', '', '1e3', '0x10', '+5', ' 5', '10.0', '1e3x']) {
        refused.push([`${path}${sep}limit=${encodeURIComponent(limit)}`, /^limit must be an integer from 1 to 1000, got /]);
      }
      for (const next of ['garbage', 'bkp-nope', 'rst-zz', `${'x'.repeat(300)}`, '../../etc', 'vol-0000000000000000']) {
        refused.push([`${path}${sep}next=${encodeURIComponent(next)}`, /^next must be a token from an earlier answer listing .*, got "/]);
      }
    }
    // Foreign tokens: an id of another list, or of another volume's backups or another group's group backups.
    refused.push(
      [`/backups?volumeId=${otherVolume}&next=${backupIds[1]}`, new RegExp(`^next must be a token from an earlier answer listing the backups of ${otherVolume}, got "${backupIds[1]}"$`)],
      [`/backups?next=${restores[1]!.restoreId}`, /^next must be a token from an earlier answer listing backups, got "rst-/],
      [`/restores?next=${backupIds[1]}`, /^next must be a token from an earlier answer listing restores, got "bkp-/],
      [`/restores?backupId=${backupIds[0]}&next=${groupRestoreIds[1]}`, /^next must be a token from an earlier answer listing restores, got "grst-/],
      [`/group-backups?groupId=${otherGroup}&next=${groupBackupIds[1]}`, new RegExp(`listing the group backups of ${otherGroup}, got "${groupBackupIds[1]}"$`)],
      [`/group-backups?next=${backupIds[1]}`, /^next must be a token from an earlier answer listing group backups, got "bkp-/],
      [`/group-restores?next=${restores[1]!.restoreId}`, /^next must be a token from an earlier answer listing group restores, got "rst-/],
      [`/group-restores?next=${groupBackupIds[1]}`, /^next must be a token from an earlier answer listing group restores, got "gbkp-/],
    );
    for (const [path, message] of refused) {
      for (const as of [PROFILES.operator, PROFILES.tenantB]) {
        const r = await http(`${url}${path}`, { as });
        expect(r.status, `${path} -> ${r.body.toString().slice(0, 300)}`).toBe(400);
        expect(r.json.error).toBe('InvalidInputError');
        expect(r.json.message, path).toMatch(message);
        expect(r.json.retryable).toBe(false);
      }
    }
    // A long token is not echoed whole.
    const long = await http(`${url}/restores?next=${'x'.repeat(300)}`);
    expect(long.json.message.length).toBeLessThan(250);
    // Nothing changed: every list walks as before.
    expect(await Promise.all(lists.map(([path, key, idKey]) => walk(path, key, idKey, 1000)))).toEqual(before);
  });

  it('go on from a next whose entry was deleted meanwhile, listing the rest once', async () => {
    const first = await http(`${url}/backups?volumeId=${volumeId}&limit=${LIMIT}`);
    expect(first.status, first.body.toString()).toBe(200);
    expect(first.json.backups.map((b: any) => b.backupId)).toEqual(backupIds.slice(0, 2));
    // The entry the token names goes (merged forward into the backups after it).
    const deleted = backupIds[1]!;
    expect((await http(`${url}/backups/${deleted}`, { method: 'DELETE' })).status).toBe(202);
    for (let i = 0; i < 300 && (await http(`${url}/backups/${deleted}`)).status !== 404; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await http(`${url}/backups/${deleted}`)).status).toBe(404);
    const rest: string[] = [];
    let next: string | undefined = first.json.next;
    while (next !== undefined) {
      const r = await http(`${url}/backups?volumeId=${volumeId}&limit=${LIMIT}&next=${encodeURIComponent(next)}`);
      expect(r.status, r.body.toString()).toBe(200);
      rest.push(...r.json.backups.map((b: any) => b.backupId));
      next = r.json.next;
    }
    expect(rest).toEqual(backupIds.slice(2));
    expectOnceInOrder((await walk('/backups', 'backups', 'backupId', LIMIT)).ids, [backupIds[0]!, ...backupIds.slice(2)]);
  });
});
