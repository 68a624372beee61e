import { describe, expect, it } from 'vitest';
import { evacuationProgress } from '#shared/maintenance/evacuation-progress.ts';
import { newEvacuation } from '#shared/maintenance/drives.ts';
import { formatBytes, formatDuration, listDrivesCommand, reactivateDriveCommand, renderProgress, retireDriveCommand, watchEvacuation } from '../../cli/drives.ts';

const start = 1_700_000_000_000;
const running = evacuationProgress({ ...newEvacuation('t', false, start), chunksTotal: 1000, bytesTotal: 4000 * 2 ** 20, chunksMoved: 370, bytesMoved: 1480 * 2 ** 20, lastProgressAtMs: start + 100_000 }, 'retiring', start + 100_000);

describe('the evacuation progress bar', () => {
  it('shows the bar, chunks and bytes moved, what is left, the rate and the ETA', () => {
    const line = renderProgress(running, 20);
    expect(line).toContain('[#######-------------]');
    expect(line).toContain(' 37% 370/1000 chunks');
    expect(line).toContain('1.4 GiB/3.9 GiB');
    expect(line).toContain('630 left (2.5 GiB)');
    expect(line).toContain('14.8 MiB/s');
    expect(line).toContain('ETA 2m51s');
  });

  it('formats sizes and durations', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatDuration(3725)).toBe('1h02m05s');
    expect(formatDuration(null)).toBe('--');
  });

  it('polls until the drive is retired, one line per change when not on a terminal', async () => {
    const done = evacuationProgress({ ...newEvacuation('t', false, start), chunksTotal: 1000, bytesTotal: 1000, chunksMoved: 1000, bytesMoved: 1000, completedAtMs: start + 5000 }, 'retired', start + 9000);
    const answers = [
      { driveId: 's/d01', state: 'retiring', evacuation: running },
      { driveId: 's/d01', state: 'retiring', evacuation: running },
      { driveId: 's/d01', state: 'retired', evacuation: done },
    ];
    const urls: string[] = [];
    const fetch = async (url: string) => {
      urls.push(url);
      const body = answers.shift()!;
      return { status: 200, json: async () => body };
    };
    const lines: string[] = [];
    const code = await watchEvacuation('http://api', 's/d01', { write: (s: string) => (lines.push(s), true) } as never, { fetch, intervalMs: 1 });
    expect(code).toBe(0);
    expect(urls[0]).toBe('http://api/drives/s/d01');
    expect(lines.length).toBe(2);
    expect(lines[1]).toContain('100% 1000/1000 chunks');
    expect(lines[1]).toContain('done');
  });

  it('returns 1 for a drive that is not being evacuated, and lists and retires drives', async () => {
    const out: string[] = [];
    const w = { write: (s: string) => (out.push(s), true) } as never;
    const one = async () => ({ status: 200, json: async () => ({ driveId: 's/d00', state: 'active' }) });
    expect(await watchEvacuation('http://api', 's/d00', w, { fetch: one })).toBe(1);
    const list = async () => ({ status: 200, json: async () => ({ drives: [{ driveId: 's/d00', state: 'active' }, { driveId: 's/d01', state: 'retiring', writeErrors: 3, lostChunks: 2, evacuation: running }] }) });
    expect(await listDrivesCommand('http://api', w, { fetch: list })).toBe(0);
    expect(out.join('')).toContain('retiring  errors   3 lost   2  [');
    expect(out.join('')).toContain('active    errors   0 lost   0\n');
    const seen: Array<{ url: string; method?: string }> = [];
    const retire = async (url: string, init?: { method?: string }) => (seen.push({ url, method: init?.method }), { status: 202, json: async () => ({ driveId: 's/d01', state: 'retiring', evacuation: running }) });
    expect(await retireDriveCommand('http://api/', 's/d01', w, { fetch: retire })).toBe(0);
    expect(seen).toEqual([{ url: 'http://api/drives/s/d01/retire', method: 'POST' }]);
    const react = async (url: string, init?: { method?: string }) => (seen.push({ url, method: init?.method }), { status: 200, json: async () => ({ driveId: 's/d01', state: 'active' }) });
    expect(await reactivateDriveCommand('http://api', 's/d01', w, { fetch: react })).toBe(0);
    expect(seen.at(-1)).toEqual({ url: 'http://api/drives/s/d01/reactivate', method: 'POST' });
    expect(out.at(-1)).toBe('s/d01 is active\n');
    await expect(watchEvacuation('http://api', 'nodrive', w, { fetch: one })).rejects.toThrow(/sled/);
  });
});
