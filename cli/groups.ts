/**
 * The consistency group commands, wired by cli/main.ts (docs/consistency-groups.md):
 *
 *   sledge group create <name> <volumeId>... --api URL          POST /consistency-groups
 *   sledge group show <groupId> --api URL                       GET /consistency-groups/{id}
 *   sledge group add|remove <groupId> <volumeId>... --api URL   PATCH /consistency-groups/{id}
 *   sledge group delete <groupId> --api URL                     DELETE /consistency-groups/{id}
 *   sledge group snapshot <groupId> --api URL [--key VOL=KEY]...  POST /consistency-groups/{id}/snapshots
 *   sledge group snapshots <groupId> --api URL                  GET /consistency-groups/{id}/snapshots (every page)
 *   sledge group delete-snapshot <groupId> <groupSnapshotId> --api URL
 *   sledge group backup <groupId> <groupSnapshotId> --api URL   POST .../snapshots/{gsid}/backups, then GET /group-backups/{id}
 *   sledge group restore <groupBackupId> --api URL [--name NAME]  POST /group-restores, then GET /group-restores/{id}
 *
 * `backup` and `restore` draw a progress bar until the group job is complete (as `sledge backup`).
 * `parseGroupArgs` only parses (UsageError for a wrong command line); `runGroupCommand` talks
 * HTTP to the API and writes one line per group, member or group snapshot.
 */
import { parseArgs } from 'node:util';
import { watch, type JobProgressJson } from './backup.ts';
import { apiFetch, formatBytes, type Fetch, type Out } from './drives.ts';
import { parseArgsUsageError, UsageError } from './errors.ts';
import { checkApi, checkId, send } from './snapshots.ts';

export const GROUP_SUBCOMMANDS = ['create', 'show', 'add', 'remove', 'delete', 'snapshot', 'snapshots', 'delete-snapshot', 'backup', 'restore'] as const;

export type GroupCommand =
  | { kind: 'create'; apiUrl: string; name: string; volumeIds: string[] }
  | { kind: 'show' | 'delete' | 'snapshots'; apiUrl: string; groupId: string }
  | { kind: 'add' | 'remove'; apiUrl: string; groupId: string; volumeIds: string[] }
  | { kind: 'snapshot'; apiUrl: string; groupId: string; keys: Record<string, string> }
  | { kind: 'delete-snapshot' | 'backup'; apiUrl: string; groupId: string; groupSnapshotId: string }
  | { kind: 'restore'; apiUrl: string; groupBackupId: string; groupName?: string };

function checkGroupId(id: string | undefined, usage: string): string {
  if (id === undefined) throw new UsageError(`${usage} takes a group id first`);
  if (!/^cg-[0-9a-f]{16}$/.test(id)) throw new UsageError(`${JSON.stringify(id)} is not a group id (like cg-0123456789abcdef)`);
  return id;
}

/** Parses the words after `sledge group`. Throws UsageError. */
export function parseGroupArgs(args: string[]): GroupCommand {
  const [sub, ...rest] = args;
  if (sub === undefined || sub.startsWith('-')) throw new UsageError(`sledge group needs a subcommand first: ${GROUP_SUBCOMMANDS.join(', ')}`);
  if (!(GROUP_SUBCOMMANDS as readonly string[]).includes(sub)) {
    throw new UsageError(`unknown group subcommand ${JSON.stringify(sub)}; the subcommands are ${GROUP_SUBCOMMANDS.join(', ')}`);
  }
  const usage = `sledge group ${sub}`;
  let values: { api?: string; key?: string[]; name?: string };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: rest,
      allowPositionals: true,
      strict: true,
      options: {
        api: { type: 'string' },
        ...(sub === 'snapshot' ? { key: { type: 'string', multiple: true } } : {}),
        ...(sub === 'restore' ? { name: { type: 'string' } } : {}),
      },
    }) as { values: { api?: string; key?: string[]; name?: string }; positionals: string[] });
  } catch (err) {
    throw parseArgsUsageError(err);
  }
  const apiUrl = checkApi(values.api, usage);
  const volumes = (ids: string[]) => {
    if (ids.length === 0) throw new UsageError(`${usage} needs at least one volume id`);
    return ids.map((id) => checkId(id, 'volume', usage));
  };
  switch (sub) {
    case 'create': {
      const [name, ...ids] = positionals;
      if (name === undefined || name.length === 0 || name.length > 128) throw new UsageError(`${usage} takes a name (1 to 128 characters) and then volume ids`);
      return { kind: 'create', apiUrl, name, volumeIds: volumes(ids) };
    }
    case 'add':
    case 'remove': {
      const [groupId, ...ids] = positionals;
      return { kind: sub, apiUrl, groupId: checkGroupId(groupId, usage), volumeIds: volumes(ids) };
    }
    case 'backup':
    case 'delete-snapshot': {
      if (positionals.length !== 2) throw new UsageError(`${usage} takes a group id and a group snapshot id`);
      const [groupId, groupSnapshotId] = positionals as [string, string];
      if (!/^gsnap-[0-9a-f]{16}-[0-9a-f]{8}$/.test(groupSnapshotId)) throw new UsageError(`${JSON.stringify(groupSnapshotId)} is not a group snapshot id`);
      return { kind: sub, apiUrl, groupId: checkGroupId(groupId, usage), groupSnapshotId };
    }
    case 'restore': {
      if (positionals.length !== 1) throw new UsageError(`${usage} takes exactly one group backup id`);
      const groupBackupId = positionals[0]!;
      if (!/^gbkp-[0-9a-f]{16}-[0-9a-f]{12}-[0-9a-f]{6}$/.test(groupBackupId)) {
        throw new UsageError(`${JSON.stringify(groupBackupId)} is not a group backup id (like gbkp-0123456789abcdef-0190f0e1a2b3-a1b2c3)`);
      }
      const name = values.name;
      if (name !== undefined && (name.length === 0 || name.length > 128)) throw new UsageError('--name takes 1 to 128 characters');
      return { kind: 'restore', apiUrl, groupBackupId, ...(name !== undefined ? { groupName: name } : {}) };
    }
    default: {
      if (positionals.length !== 1) throw new UsageError(`${usage} takes exactly one group id, got ${positionals.length === 0 ? 'none' : positionals.join(' ')}`);
      const groupId = checkGroupId(positionals[0], usage);
      if (sub !== 'snapshot') return { kind: sub as 'show' | 'delete' | 'snapshots', apiUrl, groupId };
      const keys: Record<string, string> = {};
      for (const pair of values.key ?? []) {
        const m = /^(vol-[A-Za-z0-9._-]+)=([A-Za-z0-9._:-]{1,64})$/.exec(pair);
        if (!m) throw new UsageError(`--key takes <volumeId>=<key>, got ${JSON.stringify(pair)}`);
        keys[m[1]!] = m[2]!;
      }
      return { kind: 'snapshot', apiUrl, groupId, keys };
    }
  }
}

interface GroupJson {
  groupId: string;
  name: string;
  volumeIds: string[];
}
interface GroupSnapshotJson {
  groupSnapshotId: string;
  state: string;
  createdAt: string;
  snapshots: Array<{ volumeId: string; snapshotId: string; commitSeq: number }>;
}

const formatGroup = (g: GroupJson) => `${g.groupId}  ${JSON.stringify(g.name)}  ${g.volumeIds.join(' ')}`;
const formatGroupSnapshot = (s: GroupSnapshotJson) =>
  `${s.groupSnapshotId}  ${s.state}  ${s.createdAt}  ${s.snapshots.map((m) => `${m.volumeId}=${m.snapshotId}@${m.commitSeq}`).join(' ')}`;

/** Runs a parsed group command; returns the exit status. */
export async function runGroupCommand(cmd: GroupCommand, out: Out, opts: { fetch?: Fetch } = {}): Promise<number> {
  const get = opts.fetch ?? apiFetch(cmd.apiUrl);
  if (cmd.kind === 'restore') return runGroupRestore(cmd, get, out);
  const path = cmd.kind === 'create' ? '/consistency-groups' : `/consistency-groups/${encodeURIComponent(cmd.groupId)}`;
  switch (cmd.kind) {
    case 'create':
      out.write(`${formatGroup((await send(get, cmd.apiUrl, 'POST', path, 201, { name: cmd.name, volumeIds: cmd.volumeIds })) as GroupJson)}\n`);
      return 0;
    case 'show':
      out.write(`${formatGroup((await send(get, cmd.apiUrl, 'GET', path, 200)) as GroupJson)}\n`);
      return 0;
    case 'add':
    case 'remove':
      out.write(`${formatGroup((await send(get, cmd.apiUrl, 'PATCH', path, 200, { [cmd.kind]: cmd.volumeIds })) as GroupJson)}\n`);
      return 0;
    case 'delete':
      await send(get, cmd.apiUrl, 'DELETE', path, 200);
      out.write(`${cmd.groupId} deleted; its volumes are in no group\n`);
      return 0;
    case 'snapshot': {
      const body = Object.keys(cmd.keys).length > 0 ? { reservationKeys: cmd.keys } : {};
      out.write(`${formatGroupSnapshot((await send(get, cmd.apiUrl, 'POST', `${path}/snapshots`, 201, body)) as GroupSnapshotJson)}\n`);
      return 0;
    }
    case 'snapshots': {
      let next: string | undefined;
      do {
        const q = new URLSearchParams({ limit: '1000', ...(next === undefined ? {} : { next }) });
        const page = (await send(get, cmd.apiUrl, 'GET', `${path}/snapshots?${q}`, 200)) as { groupSnapshots?: GroupSnapshotJson[]; next?: string };
        for (const s of page.groupSnapshots ?? []) out.write(`${formatGroupSnapshot(s)}\n`);
        next = page.next;
      } while (next !== undefined);
      return 0;
    }
    case 'delete-snapshot':
      await send(get, cmd.apiUrl, 'DELETE', `${path}/snapshots/${encodeURIComponent(cmd.groupSnapshotId)}`, 202);
      out.write(`${cmd.groupSnapshotId} deleted with its member snapshots\n`);
      return 0;
    case 'backup': {
      const started = (await send(get, cmd.apiUrl, 'POST', `${path}/snapshots/${encodeURIComponent(cmd.groupSnapshotId)}/backups`, 202, {})) as {
        groupBackupId: string;
        backups: Array<{ volumeId: string; backupId: string }>;
      };
      const id = started.groupBackupId;
      out.write(`${id}: backing up ${cmd.groupSnapshotId}: ${started.backups.map((b) => `${b.volumeId}=${b.backupId}`).join(' ')}\n`);
      const j = await watch(get, cmd.apiUrl, `/group-backups/${id}`, id, 'shipped', (b) => progressOf(b, 'bytesShipped', 'bytesToShip'), out, {});
      if (!j) return 1;
      out.write(`${id} complete: ${started.backups.length} member backups, ${formatBytes(Number(j.bytesToShip))} of changed blocks\n`);
      return 0;
    }
  }
}

function progressOf(j: Record<string, unknown>, done: string, total: string): JobProgressJson {
  return { ...(j as unknown as JobProgressJson), done: Number(j[done] ?? 0), total: Number(j[total] ?? 0) };
}

async function runGroupRestore(cmd: Extract<GroupCommand, { kind: 'restore' }>, get: Fetch, out: Out): Promise<number> {
  const body = cmd.groupName === undefined ? { groupBackupId: cmd.groupBackupId } : { groupBackupId: cmd.groupBackupId, groupName: cmd.groupName };
  const started = (await send(get, cmd.apiUrl, 'POST', '/group-restores', 202, body)) as {
    groupRestoreId: string;
    restores: Array<{ sourceVolumeId: string; volumeId: string }>;
  };
  const id = started.groupRestoreId;
  out.write(`${id}: restoring ${cmd.groupBackupId}: ${started.restores.map((r) => `${r.sourceVolumeId}->${r.volumeId}`).join(' ')}\n`);
  const j = await watch(get, cmd.apiUrl, `/group-restores/${id}`, id, 'restored', (r) => progressOf(r, 'bytesRestored', 'bytesToRestore'), out, {});
  if (!j) return 1;
  const volumes = started.restores.map((r) => r.volumeId).join(' ');
  out.write(`${id} complete: ${volumes}${j.groupId ? ` in consistency group ${String(j.groupId)}` : ''}\n`);
  return 0;
}
