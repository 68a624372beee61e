import { describe, expect, it } from 'vitest';
import { parseFlattenArgs, parseRollbackArgs, renderFlattenProgress } from '../../cli/flatten.ts';
import { UsageError } from '../../cli/errors.ts';
import { COMMAND_USAGE, commandUsage } from '../../cli/main.ts';

const API = ['--api', 'http://127.0.0.1:3000/'];
const VOL = 'vol-0123456789abcdef';
const SNAP = 'snap-0123456789abcdef-000000000042-a1b2c3';

const refused = (f: () => unknown) => {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error('not refused');
};

describe('sledge rollback and flatten command lines', () => {
  it('parse the volume, the snapshot, the key and the API', () => {
    expect(parseRollbackArgs([VOL, '--snapshot', SNAP, ...API])).toEqual({ apiUrl: 'http://127.0.0.1:3000', volumeId: VOL, snapshotId: SNAP });
    expect(parseRollbackArgs(['--key', 'gw-a:1', ...API, '--snapshot', SNAP, VOL])).toEqual({ apiUrl: 'http://127.0.0.1:3000', volumeId: VOL, snapshotId: SNAP, key: 'gw-a:1' });
    expect(parseFlattenArgs([VOL, ...API])).toEqual({ apiUrl: 'http://127.0.0.1:3000', volumeId: VOL });
    expect(parseFlattenArgs([...API, VOL])).toEqual({ apiUrl: 'http://127.0.0.1:3000', volumeId: VOL });
  });

  it('refuse what is wrong, saying what', () => {
    expect(refused(() => parseRollbackArgs([VOL, ...API]))).toBe(`--snapshot <snapshotId> is required for sledge rollback: the snapshot of ${VOL} to roll back to`);
    expect(refused(() => parseRollbackArgs(['--snapshot', SNAP, ...API]))).toBe('sledge rollback takes exactly one volume id, got none');
    expect(refused(() => parseRollbackArgs([VOL, SNAP, ...API]))).toBe(`sledge rollback takes exactly one volume id, got ${VOL} ${SNAP}`);
    expect(refused(() => parseRollbackArgs([SNAP, '--snapshot', SNAP, ...API]))).toBe(`${SNAP} is a snapshot id; sledge rollback takes a volume id`);
    expect(refused(() => parseRollbackArgs([VOL, '--snapshot', 'vol-1', ...API]))).toBe("vol-1 is a volume id; --snapshot takes a snapshot id (`sledge snapshot list vol-1` lists the volume's)");
    expect(refused(() => parseRollbackArgs([VOL, '--snapshot', 'a/b', ...API]))).toBe('"a/b" is not a snapshot id (like snap-0123456789abcdef-000000000042-a1b2c3)');
    expect(refused(() => parseRollbackArgs([VOL, '--snapshot', SNAP]))).toBe('--api <url> is required for sledge rollback');
    expect(refused(() => parseRollbackArgs([VOL, '--snapshot', SNAP, '--key', 'a b', ...API]))).toBe('--key must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, got "a b"');
    expect(refused(() => parseRollbackArgs([VOL, '--snapshot', SNAP, '--force', ...API]))).toMatch(/^Unknown option '--force'/);
    expect(refused(() => parseRollbackArgs([VOL, '--snapshot', ...API]))).toBe("Option '--snapshot' argument is ambiguous. Did you forget to specify the option argument for '--snapshot'? To specify an option argument starting with a dash use '--snapshot=-XYZ'.");
    expect(refused(() => parseFlattenArgs([...API]))).toBe('sledge flatten takes exactly one volume id, got none');
    expect(refused(() => parseFlattenArgs([SNAP, ...API]))).toBe(`${SNAP} is a snapshot id; sledge flatten takes a volume id`);
    expect(refused(() => parseFlattenArgs([VOL]))).toBe('--api <url> is required for sledge flatten');
    expect(refused(() => parseFlattenArgs([VOL, '--api', 'ftp://x']))).toBe('--api must be an http or https URL, got ftp:');
    expect(refused(() => parseFlattenArgs([VOL, '--key', 'k', ...API]))).toMatch(/^Unknown option '--key'/);
    expect(refused(() => parseFlattenArgs([VOL, '--watch', ...API]))).toMatch(/^Unknown option '--watch'/);
  });

  it('have usage entries that name their options', () => {
    expect(commandUsage('rollback').startsWith('usage: sledge rollback <volumeId> --snapshot <snapshotId> --api <url> [--key KEY]\n')).toBe(true);
    expect(commandUsage('flatten').startsWith('usage: sledge flatten <volumeId> --api <url>\n')).toBe(true);
    expect(Object.keys(COMMAND_USAGE)).toContain('rollback');
  });
});

describe('the flatten progress bar', () => {
  const p = { pagesDone: 400, pages: 1000, bytesCopied: 150 * 2 ** 20, fractionDone: 0.4, startedAt: '2026-12-01T14:00:00.000Z', updatedAt: '2026-12-01T14:00:30.000Z' };

  it('shows the bar, pages, bytes copied, the rate and the ETA from the worker\'s timestamps', () => {
    expect(renderFlattenProgress(p, 20)).toBe('[########------------]  40% 400/1000 pages  150.0 MiB copied  5.0 MiB/s  ETA 45s');
  });

  it('has no rate or ETA before anything is done, and a full bar at the end', () => {
    expect(renderFlattenProgress({ ...p, pagesDone: 0, bytesCopied: 0, fractionDone: 0, updatedAt: p.startedAt }, 10)).toBe('[----------]   0% 0/1000 pages  0 B copied  --/s  ETA --');
    expect(renderFlattenProgress({ ...p, pagesDone: 1000, fractionDone: 1 }, 10)).toBe('[##########] 100% 1000/1000 pages  150.0 MiB copied  5.0 MiB/s  ETA 0s');
  });
});
