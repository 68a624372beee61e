import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { Api, useSledgeEnv } from './helpers.ts';
import { describeRun, run, SLEDGE_BIN } from './nbd-tools.ts';

let api: Api;
let url: string;
beforeAll(() => {
  url = useSledgeEnv().apiUrl;
  api = new Api(url);
});

describe('sledge operator commands', () => {
  it('lists drives, rebuilds a page map, and explains usage errors', async () => {
    const drives = await run(process.execPath, [SLEDGE_BIN, 'drives', '--api', url]);
    expect(drives.code, describeRun('sledge drives', drives)).toBe(0);
    expect(drives.stdout).toMatch(/d00/);

    const vol = await api.createVolume({ sizeBytes: 4 * 1024 * 1024 });
    const data = randomBytes(8192);
    await api.write(vol.volumeId, 0, data);
    const rebuilt = await run(process.execPath, [SLEDGE_BIN, 'rebuild', vol.volumeId, '--api', url]);
    expect(rebuilt.code, describeRun('sledge rebuild', rebuilt)).toBe(0);
    expect((await api.read(vol.volumeId, 0, 8192)).equals(data)).toBe(true);

    const usage = await run(process.execPath, [SLEDGE_BIN, 'rebuild', vol.volumeId]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/--api <url> is required for rebuild/);
  });
});
