import { describe, expect, it } from 'vitest';
import { parseGroupArgs } from '../../cli/groups.ts';
import { UsageError } from '../../cli/errors.ts';
import { COMMAND_USAGE } from '../../cli/main.ts';

const API = ['--api', 'http://127.0.0.1:3000/'];
const URL = 'http://127.0.0.1:3000';
const GROUP = 'cg-0123456789abcdef';
const GSNAP = 'gsnap-0123456789abcdef-a1b2c3d4';
const GBKP = 'gbkp-0123456789abcdef-0190f0e1a2b3-a1b2c3';

describe('sledge group command lines', () => {
  it('parse each subcommand, its ids and its options', () => {
    expect(parseGroupArgs(['create', 'db', 'vol-a', 'vol-b', ...API])).toEqual({ kind: 'create', apiUrl: URL, name: 'db', volumeIds: ['vol-a', 'vol-b'] });
    expect(parseGroupArgs(['show', GROUP, ...API])).toEqual({ kind: 'show', apiUrl: URL, groupId: GROUP });
    expect(parseGroupArgs(['add', GROUP, 'vol-c', ...API])).toEqual({ kind: 'add', apiUrl: URL, groupId: GROUP, volumeIds: ['vol-c'] });
    expect(parseGroupArgs(['remove', GROUP, 'vol-a', 'vol-b', ...API])).toEqual({ kind: 'remove', apiUrl: URL, groupId: GROUP, volumeIds: ['vol-a', 'vol-b'] });
    expect(parseGroupArgs(['delete', GROUP, ...API])).toEqual({ kind: 'delete', apiUrl: URL, groupId: GROUP });
    expect(parseGroupArgs(['snapshot', GROUP, '--key', 'vol-a=gw-a', '--key', 'vol-b=gw:b', ...API])).toEqual({
      kind: 'snapshot',
      apiUrl: URL,
      groupId: GROUP,
      keys: { 'vol-a': 'gw-a', 'vol-b': 'gw:b' },
    });
    expect(parseGroupArgs(['snapshots', GROUP, ...API])).toEqual({ kind: 'snapshots', apiUrl: URL, groupId: GROUP });
    expect(parseGroupArgs(['delete-snapshot', GROUP, GSNAP, ...API])).toEqual({ kind: 'delete-snapshot', apiUrl: URL, groupId: GROUP, groupSnapshotId: GSNAP });
    expect(parseGroupArgs(['backup', GROUP, GSNAP, ...API])).toEqual({ kind: 'backup', apiUrl: URL, groupId: GROUP, groupSnapshotId: GSNAP });
    expect(parseGroupArgs(['restore', GBKP, ...API])).toEqual({ kind: 'restore', apiUrl: URL, groupBackupId: GBKP });
    expect(parseGroupArgs(['restore', GBKP, '--name', 'db', ...API])).toEqual({ kind: 'restore', apiUrl: URL, groupBackupId: GBKP, groupName: 'db' });
    expect(Object.keys(COMMAND_USAGE)).toContain('group');
  });

  it('refuse what is wrong, saying what', () => {
    const refused = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        expect(err).toBeInstanceOf(UsageError);
        return (err as Error).message;
      }
      throw new Error('not refused');
    };
    expect(refused(() => parseGroupArgs([]))).toMatch(/^sledge group needs a subcommand first: create, show/);
    expect(refused(() => parseGroupArgs(['rename', GROUP, ...API]))).toMatch(/^unknown group subcommand "rename"/);
    expect(refused(() => parseGroupArgs(['create', 'db', ...API]))).toBe('sledge group create needs at least one volume id');
    expect(refused(() => parseGroupArgs(['show', 'vol-a', ...API]))).toBe('"vol-a" is not a group id (like cg-0123456789abcdef)');
    expect(refused(() => parseGroupArgs(['show', GROUP]))).toBe('--api <url> is required for sledge group show');
    expect(refused(() => parseGroupArgs(['snapshot', GROUP, '--key', 'gw-a', ...API]))).toBe('--key takes <volumeId>=<key>, got "gw-a"');
    expect(refused(() => parseGroupArgs(['show', GROUP, '--key', 'vol-a=k', ...API]))).toMatch(/key/);
    expect(refused(() => parseGroupArgs(['add', GROUP, 'snap-0123456789abcdef-000000000042-a1b2c3', ...API]))).toMatch(/is a snapshot id/);
    expect(refused(() => parseGroupArgs(['delete-snapshot', GROUP, ...API]))).toBe('sledge group delete-snapshot takes a group id and a group snapshot id');
    expect(refused(() => parseGroupArgs(['backup', GROUP, 'gsnap-nope', ...API]))).toBe('"gsnap-nope" is not a group snapshot id');
    expect(refused(() => parseGroupArgs(['restore', GROUP, ...API]))).toMatch(/^"cg-0123456789abcdef" is not a group backup id/);
    expect(refused(() => parseGroupArgs(['restore', GBKP, '--name', '', ...API]))).toBe('--name takes 1 to 128 characters');
    expect(refused(() => parseGroupArgs(['backup', GROUP, GSNAP, '--name', 'x', ...API]))).toMatch(/name/);
  });
});
