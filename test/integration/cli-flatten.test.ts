import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { runFlatten } from '../../cli/flatten.ts';
import { http, testApi } from './helpers.ts';
import { expectCliErrors, expectUsageErrors, sledge } from './cli-tools.ts';
import { describeRun } from './nbd-tools.ts';

/**
 * `sledge rollback` and `sledge flatten`: the real CLI, as a process, against the local API;
 * what it prints is checked against what the API then says and reads. The flatten progress
 * bar on a terminal is checked in-process, with a stream that says it is a TTY, against the
 * same API.
 */
const MiB = 1024 * 1024;
const BLOCK = 4096;

const { api, apiUrl: url } = testApi({ sledgeEnv: true });

const post = (path: string, body: unknown) => http(`${url}${path}`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

async function snapshot(volumeId: string): Promise<{ snapshotId: string }> {
  const r = await post(`/volumes/${volumeId}/snapshots`, {});
  expect(r.status, r.body.toString()).toBe(201);
  return r.json;
}

/** A 6 MiB volume with 5 MiB written, a snapshot, and a clone of it with 256 KiB of its own; the bytes the clone reads. */
async function cloneWithData(): Promise<{ parentId: string; snapshotId: string; cloneId: string; expected: Buffer }> {
  const vol = await api.createVolume({ sizeBytes: 6 * MiB });
  const a = randomBytes(5 * MiB);
  await api.write(vol.volumeId, 0, a.subarray(0, 4 * MiB));
  await api.write(vol.volumeId, 4 * MiB, a.subarray(4 * MiB));
  const s = await snapshot(vol.volumeId);
  const clone = await api.createVolume({ sourceSnapshotId: s.snapshotId });
  const w = randomBytes(64 * BLOCK);
  await api.write(clone.volumeId, MiB - 16 * BLOCK, w);
  const expected = Buffer.concat([a, Buffer.alloc(MiB)]);
  w.copy(expected, MiB - 16 * BLOCK);
  return { parentId: vol.volumeId, snapshotId: s.snapshotId, cloneId: clone.volumeId, expected };
}

async function readAll(volumeId: string, size: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let off = 0; off < size; off += 2 * MiB) parts.push(await api.read(volumeId, off, Math.min(2 * MiB, size - off)));
  return Buffer.concat(parts);
}

describe('sledge rollback', () => {
  it('rolls a volume back to its snapshot, saying how many pages in which commit, and refuses bad input in one line', async () => {
    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    const a = randomBytes(2 * MiB);
    await api.write(vol.volumeId, 0, a);
    const s = await snapshot(vol.volumeId);
    await api.write(vol.volumeId, MiB - BLOCK, randomBytes(2 * MiB)); // pages 0, 1, 2
    await api.trim(vol.volumeId, 6 * MiB, 8 * BLOCK); // page 6
    const atS = Buffer.concat([a, Buffer.alloc(6 * MiB)]);

    const r = await sledge(['rollback', vol.volumeId, '--snapshot', s.snapshotId, '--api', url]);
    expect(r.code, describeRun('sledge rollback', r)).toBe(0);
    expect(r.stderr).toBe('');
    const described = (await api.describe(vol.volumeId)).json;
    expect(r.stdout).toBe(`${vol.volumeId} rolled back to ${s.snapshotId}: 4 pages restored in commit ${described.commitSeq}\n`);
    expect((await readAll(vol.volumeId, 8 * MiB)).equals(atS)).toBe(true);

    // A snapshot with nothing changed since: nothing to do, and said so.
    const now = await snapshot(vol.volumeId);
    const none = await sledge(['rollback', vol.volumeId, '--snapshot', now.snapshotId, '--api', url]);
    expect({ code: none.code, stdout: none.stdout, stderr: none.stderr }).toEqual({ code: 0, stdout: `${vol.volumeId} already reads as ${now.snapshotId}: nothing changed since it\n`, stderr: '' });
    expect((await api.describe(vol.volumeId)).json.commitSeq).toBe(described.commitSeq);

    // Bad input: another volume's snapshot, an unknown snapshot. Each changes nothing.
    const other = await api.createVolume({ sizeBytes: 4 * MiB });
    const os = await snapshot(other.volumeId);
    const missing = `snap-${vol.volumeId.slice(4)}-000000000099-abcdef`;
    await api.write(vol.volumeId, 0, randomBytes(BLOCK));
    const moved = Buffer.from(await readAll(vol.volumeId, 8 * MiB));
    const cases = [
      { args: ['rollback', vol.volumeId, '--snapshot', os.snapshotId], stderr: `sledge: snapshot ${os.snapshotId} is of volume ${other.volumeId}, not ${vol.volumeId} (400)\n` },
      { args: ['rollback', vol.volumeId, '--snapshot', missing], stderr: `sledge: snapshot ${missing} does not exist (404)\n` },
    ];
    const results = await Promise.all(cases.map((c) => sledge([...c.args, '--api', url])));
    for (const [j, res] of results.entries()) expect({ code: res.code, stdout: res.stdout, stderr: res.stderr }, cases[j]!.args.join(' ')).toEqual({ code: 1, stdout: '', stderr: cases[j]!.stderr });
    expect((await readAll(vol.volumeId, 8 * MiB)).equals(moved)).toBe(true);

    // A reserved volume: refused without the holder's key (one line, with the --key hint), done with it.
    for (const body of [
      { action: 'register', key: 'gw-cli-rb' },
      { action: 'reserve', key: 'gw-cli-rb', type: 'write-exclusive' },
    ]) {
      const res = await post(`/volumes/${vol.volumeId}/reservations`, body);
      expect(res.status, res.body.toString()).toBe(200);
    }
    const fenced = await sledge(['rollback', vol.volumeId, '--snapshot', s.snapshotId, '--api', url]);
    expect(fenced.code, describeRun('sledge rollback (fenced)', fenced)).toBe(1);
    expect(fenced.stdout).toBe('');
    expect(fenced.stderr.startsWith(`sledge: volume ${vol.volumeId} is reserved `), fenced.stderr).toBe(true);
    const refusal = await post(`/volumes/${vol.volumeId}/rollback`, { snapshotId: s.snapshotId });
    expect(refusal.status).toBe(409);
    expect(fenced.stderr).toBe(`sledge: ${refusal.json.message} (409); give the reservation holder's key with --key\n`);
    expect(fenced.stderr.split('\n').length, fenced.stderr).toBe(2);
    expect((await readAll(vol.volumeId, 8 * MiB)).equals(moved)).toBe(true);
    const keyed = await sledge(['rollback', vol.volumeId, '--snapshot', s.snapshotId, '--key', 'gw-cli-rb', '--api', url]);
    expect(keyed.code, describeRun('sledge rollback --key', keyed)).toBe(0);
    expect(keyed.stdout).toMatch(new RegExp(`^${vol.volumeId} rolled back to ${s.snapshotId}: \\d+ pages? restored in commit \\d+\\n$`));
    expect((await readAll(vol.volumeId, 8 * MiB)).equals(atS)).toBe(true);
  });
});

describe('sledge flatten', () => {
  it('flattens a clone, one progress line per change when stdout is not a terminal, exit 0 once it has no parent', async () => {
    const c = await cloneWithData();
    const r = await sledge(['flatten', c.cloneId, '--api', url]);
    expect(r.code, describeRun('sledge flatten', r)).toBe(0);
    expect(r.stderr).toBe('');
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(`${c.cloneId}: flattening 6 pages, copying what it still reads from ${c.snapshotId}`);
    expect(lines[lines.length - 1]).toMatch(new RegExp(`^${c.cloneId} flattened in \\d+s: it no longer reads through ${c.snapshotId}$`));
    const progress = lines.slice(1, -1);
    for (const l of progress) {
      expect(l).toMatch(new RegExp(`^${c.cloneId} flattening: (waiting for the worker|\\[[#-]+\\] +\\d+% [0-6]/6 pages {2}\\S+ \\S+ copied {2}\\S+/s {2}ETA \\S+)$`));
    }
    expect(new Set(progress).size, 'a line is printed only when it changes').toBe(progress.length);
    for (let i = 1; i < progress.length; i++) expect(progress[i], 'printed only when it changes').not.toBe(progress[i - 1]);

    const shown = (await api.describe(c.cloneId)).json;
    expect(shown.parent).toBeUndefined();
    expect(shown.flatten).toBeUndefined();
    expect((await readAll(c.cloneId, 6 * MiB)).equals(c.expected)).toBe(true);
    expect((await http(`${url}/snapshots/${c.snapshotId}`)).json.dependants).toEqual([]);

    // Again: it is no clone now. An unknown volume. One line each, exit 1.
    await expectCliErrors((args) => sledge([...args, '--api', url]), [
      { args: ['flatten', c.cloneId], stderr: `sledge: volume ${c.cloneId} is not a clone (or is already flattened): it has no parent to copy from (409)\n` },
      { args: ['flatten', c.parentId], stderr: `sledge: volume ${c.parentId} is not a clone (or is already flattened): it has no parent to copy from (409)\n` },
      { args: ['flatten', 'vol-0000000000000000'], stderr: 'sledge: volume vol-0000000000000000 does not exist (404)\n' },
    ]);
  });

  it('redraws one line in place on a terminal', async () => {
    const c = await cloneWithData();
    const writes: string[] = [];
    const out = { isTTY: true, columns: 120, write: (s: string) => (writes.push(s), true) };
    const code = await runFlatten({ apiUrl: url, volumeId: c.cloneId }, out, { intervalMs: 50 });
    expect(code).toBe(0);
    expect(writes[0]).toBe(`${c.cloneId}: flattening 6 pages, copying what it still reads from ${c.snapshotId}\n`);
    const redraws = writes.slice(1);
    expect(redraws.length).toBeGreaterThan(0);
    for (const w of redraws) expect(w.startsWith('\r\x1b[2K'), JSON.stringify(w)).toBe(true);
    for (const w of redraws.slice(0, -1)) expect(w.includes('\n'), JSON.stringify(w)).toBe(false);
    expect(redraws[redraws.length - 1]).toMatch(new RegExp(`^\\r\\x1b\\[2K${c.cloneId} flattened in \\d+s: it no longer reads through ${c.snapshotId}\\n$`));
    expect((await api.describe(c.cloneId)).json.parent).toBeUndefined();
    expect((await readAll(c.cloneId, 6 * MiB)).equals(c.expected)).toBe(true);
  });
});

describe('the rollback and flatten command lines', () => {
  it('print their usage for --help and refuse a wrong command line with it, exit 2', async () => {
    const [rbHelp, flHelp] = await Promise.all([sledge(['rollback', '--help']), sledge(['help', 'flatten'])]);
    expect({ code: rbHelp.code, stderr: rbHelp.stderr }).toEqual({ code: 0, stderr: '' });
    expect(rbHelp.stdout.startsWith('usage: sledge rollback <volumeId> --snapshot <snapshotId> --api <url> [--key KEY]\n'), rbHelp.stdout).toBe(true);
    expect({ code: flHelp.code, stderr: flHelp.stderr }).toEqual({ code: 0, stderr: '' });
    expect(flHelp.stdout.startsWith('usage: sledge flatten <volumeId> --api <url>\n'), flHelp.stdout).toBe(true);

    await expectUsageErrors(sledge, [
      { args: ['rollback', 'vol-1', '--api', url], line: '--snapshot <snapshotId> is required for sledge rollback: the snapshot of vol-1 to roll back to', usage: 'usage: sledge rollback ' },
      { args: ['rollback', 'vol-1', '--snapshot', '--api', url], line: "Option '--snapshot' argument is ambiguous. Did you forget to specify the option argument for '--snapshot'?", usage: 'usage: sledge rollback ' },
      { args: ['flatten', '--api', url], line: 'sledge flatten takes exactly one volume id, got none', usage: 'usage: sledge flatten ' },
      { args: ['flatten', 'vol-1'], line: '--api <url> is required for sledge flatten', usage: 'usage: sledge flatten ' },
    ]);
  });
});
