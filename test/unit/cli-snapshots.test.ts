import { describe, expect, it } from 'vitest';
import { formatSize, formatSnapshot, parseCloneArgs, parseSize, parseSnapshotArgs } from '../../cli/snapshots.ts';
import { UsageError } from '../../cli/errors.ts';

const API = ['--api', 'http://127.0.0.1:3000/'];
const SNAP = 'snap-0123456789abcdef-000000000042-a1b2c3';

describe('sledge snapshot and clone command lines', () => {
  it('parse each subcommand, its id and its options', () => {
    expect(parseSnapshotArgs(['create', 'vol-0123456789abcdef', '--name', 'nightly 1', '--key', 'gw-a:1', ...API])).toEqual({
      kind: 'create',
      apiUrl: 'http://127.0.0.1:3000',
      volumeId: 'vol-0123456789abcdef',
      name: 'nightly 1',
      key: 'gw-a:1',
    });
    expect(parseSnapshotArgs(['list', ...API, 'vol-0123456789abcdef'])).toEqual({ kind: 'list', apiUrl: 'http://127.0.0.1:3000', volumeId: 'vol-0123456789abcdef' });
    expect(parseSnapshotArgs(['delete', SNAP, ...API])).toEqual({ kind: 'delete', apiUrl: 'http://127.0.0.1:3000', snapshotId: SNAP });
    expect(parseCloneArgs([SNAP, '--size', '2TiB', '--name', 'copy', ...API])).toEqual({ kind: 'clone', apiUrl: 'http://127.0.0.1:3000', snapshotId: SNAP, sizeBytes: 2 * 2 ** 40, name: 'copy' });
    expect(parseCloneArgs([SNAP, ...API])).toEqual({ kind: 'clone', apiUrl: 'http://127.0.0.1:3000', snapshotId: SNAP });
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
    expect(refused(() => parseSnapshotArgs([]))).toBe('sledge snapshot needs a subcommand first: create, list, delete');
    expect(refused(() => parseSnapshotArgs(['--api', 'http://x', 'create']))).toBe('sledge snapshot needs a subcommand first: create, list, delete');
    expect(refused(() => parseSnapshotArgs(['remove', SNAP, ...API]))).toBe('unknown snapshot subcommand "remove"; the subcommands are create, list, delete');
    expect(refused(() => parseSnapshotArgs(['create', ...API]))).toBe('sledge snapshot create takes exactly one volume id, got none');
    expect(refused(() => parseSnapshotArgs(['list', 'vol-1', 'vol-2', ...API]))).toBe('sledge snapshot list takes exactly one volume id, got vol-1 vol-2');
    expect(refused(() => parseSnapshotArgs(['create', SNAP, ...API]))).toBe(`${SNAP} is a snapshot id; sledge snapshot create takes a volume id`);
    expect(refused(() => parseSnapshotArgs(['delete', 'vol-1', ...API]))).toBe("vol-1 is a volume id; sledge snapshot delete takes a snapshot id (`sledge snapshot list vol-1` lists the volume's)");
    expect(refused(() => parseSnapshotArgs(['delete', 'a/b', ...API]))).toBe('"a/b" is not a snapshot id (like snap-0123456789abcdef-000000000042-a1b2c3)');
    expect(refused(() => parseSnapshotArgs(['list', 'vol-1']))).toBe('--api <url> is required for sledge snapshot list');
    expect(refused(() => parseSnapshotArgs(['list', 'vol-1', '--api', 'ftp://x']))).toBe('--api must be an http or https URL, got ftp:');
    expect(refused(() => parseSnapshotArgs(['create', 'vol-1', '--key', 'a b', ...API]))).toBe('--key must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, got "a b"');
    expect(refused(() => parseSnapshotArgs(['delete', SNAP, '--name', 'x', ...API]))).toMatch(/^Unknown option '--name'/);
    expect(refused(() => parseCloneArgs(['vol-1', ...API]))).toBe("vol-1 is a volume id; sledge clone takes a snapshot id (`sledge snapshot list vol-1` lists the volume's)");
    expect(refused(() => parseCloneArgs([SNAP, '--key', 'k', ...API]))).toMatch(/^Unknown option '--key'/);
  });

  it('read sizes as bytes or whole binary units, and print them exactly', () => {
    expect(parseSize('4096', '--size')).toBe(4096);
    expect(parseSize('8MiB', '--size')).toBe(8 * 2 ** 20);
    expect(parseSize('3GiB', '--size')).toBe(3 * 2 ** 30);
    for (const bad of ['0', '-1', '1.5GiB', '8GB', '8 GiB', '', '99999999TiB', '0x10']) {
      expect(() => parseSize(bad, '--size'), bad).toThrow(`--size must be a positive number of bytes, or of KiB, MiB, GiB or TiB (e.g. 8GiB), got ${JSON.stringify(bad)}`);
    }
    expect(formatSize(2 ** 40)).toBe('1 TiB');
    expect(formatSize(3 * 2 ** 30)).toBe('3 GiB');
    expect(formatSize(1536 * 2 ** 20)).toBe('1536 MiB');
    expect(formatSize(2 ** 30 + 4096)).toBe('1048580 KiB');
    expect(formatSize(1000)).toBe('1000 bytes');
  });

  it('print one line per snapshot, the id first', () => {
    const s = { snapshotId: SNAP, volumeId: 'vol-0123456789abcdef', sizeBytes: 2 ** 30, blockSizeBytes: 4096, createdAt: '2026-12-01T14:00:00.000Z', commitSeq: 42, state: 'ready', dependants: [] };
    expect(formatSnapshot(s)).toBe(`${SNAP}  commit 42  1 GiB  2026-12-01T14:00:00.000Z`);
    expect(formatSnapshot({ ...s, name: 'a "b"', dependants: ['vol-1', 'vol-2'] })).toBe(`${SNAP}  commit 42  1 GiB  2026-12-01T14:00:00.000Z  "a \\"b\\""  clones vol-1,vol-2`);
    expect(formatSnapshot({ ...s, parent: { volumeId: 'vol-p', snapshotId: 'snap-p' } })).toBe(`${SNAP}  commit 42  1 GiB  2026-12-01T14:00:00.000Z  of a clone of snap-p`);
  });
});
