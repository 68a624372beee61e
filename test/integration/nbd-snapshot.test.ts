/**
 * A snapshot served read-only over NBD (`sledge nbd --snapshot`, docs/snapshots.md), through
 * the real clients: `qemu-img compare` of the export with the bytes written before the snapshot
 * while the volume keeps changing, and nbdsh seeing READ_ONLY and EPERM on a write.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { http, testApi, testTempDir } from './helpers.ts';
import { NBDSH_ERRNO, describeRun, nbdsh, run, startGateway } from './nbd-tools.ts';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const dir = testTempDir('sledge-nbd-snapshot-');
const { api, apiUrl } = testApi();

describe('sledge nbd --snapshot', () => {
  it('serves the bytes written before the snapshot, read-only, while the volume keeps changing', async () => {
    const vol = await api.createVolume({ sizeBytes: SIZE });
    const before = Buffer.alloc(SIZE);
    for (let off = 0; off < 10 * MiB; off += 2 * MiB) {
      const data = randomBytes(2 * MiB);
      await api.write(vol.volumeId, off + MiB, data);
      data.copy(before, off + MiB);
    }
    const snap = await http(`${apiUrl}/volumes/${vol.volumeId}/snapshots`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(snap.status, snap.body.toString()).toBe(201);
    const image = join(dir, 'before.raw');
    writeFileSync(image, before);

    const gw = await startGateway(apiUrl, { snapshotId: snap.json.snapshotId }, ['--socket', join(dir, 'snap.sock')]);
    // The volume keeps changing underneath: overwrite and trim what the snapshot holds.
    let writing = true;
    let writes = 0;
    const writer = (async () => {
      while (writing) {
        await api.write(vol.volumeId, (writes % 12) * MiB, randomBytes(MiB));
        if (writes % 3 === 0) await api.trim(vol.volumeId, ((writes + 5) % 16) * MiB, MiB);
        writes++;
      }
    })();
    try {
      const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, gw.uri], { timeoutMs: 180_000 });
      expect(cmp.code, describeRun('qemu-img compare', cmp)).toBe(0);
      // Read-only: advertised, and a write is refused with EPERM.
      const ro = await nbdsh(
        gw.uri,
        `${NBDSH_ERRNO}
print("ro", h.is_read_only())
print("write", code(lambda: h.pwrite(b"x" * 4096, 0)))
`,
      );
      expect(ro.code, describeRun('nbdsh', ro)).toBe(0);
      expect(ro.stdout).toContain('ro True');
      expect(ro.stdout).toContain('write EPERM\n');
    } finally {
      writing = false;
      await writer;
      expect(await gw.stop(), gw.output()).toBe(0);
    }
    expect(writes).toBeGreaterThan(0);
    // The volume did change; the snapshot did not.
    const now = await api.read(vol.volumeId, 0, 4 * MiB);
    expect(now.equals(before.subarray(0, 4 * MiB))).toBe(false);
  });

  it('refuses a malformed snapshot id and an unknown snapshot in one line', async () => {
    const bad = await run(process.execPath, [join(process.cwd(), 'bin/sledge.js'), 'nbd', '--snapshot', 'vol-123', '--api', apiUrl]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.split('\n')[0]).toContain('--snapshot needs a snapshot id');
    const unknown = await run(process.execPath, [join(process.cwd(), 'bin/sledge.js'), 'nbd', '--snapshot', 'snap-0123456789abcdef-000000000001-abcdef', '--api', apiUrl, '--socket', join(dir, 'x.sock')]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('does not exist');
  });
});
