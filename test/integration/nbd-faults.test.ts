/**
 * Faults of the gateway's process life, each shown with real processes: a second gateway on a
 * port already in use, a client that keeps an idle connection open through SIGTERM, a gateway
 * killed under a client that reconnects to its replacement, and (in nbd-outage.test.ts) a
 * control-plane restart under a mounted file system.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { http, testApi, testTempDir } from './helpers.ts';
import { describeRun, nbdsh, run, SLEDGE_BIN, startGateway, TOOLS_ENV } from './nbd-tools.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 16 * MiB;

const dir = testTempDir('sledge-nbd-faults-');
const { api, apiUrl } = testApi();

/** Resolves with `p`'s value, or with `onTimeout` after `ms`. */
function within<T>(p: Promise<T>, ms: number, onTimeout: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<T>((resolve) => {
    timer = setTimeout(() => resolve(onTimeout), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

describe('gateway process faults', () => {
  it('a second gateway on a port already in use fails without touching the running one', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const first = await startGateway(apiUrl, vol.volumeId, ['--port', '0'], ['--max-dirty-age-ms', '0', '--key', 'gw-first']);
    try {
      const port = /:(\d+)\//.exec(first.uri)![1]!;
      // A real second process, same volume, same port: it cannot listen, so it must not attach.
      const second = await run(process.execPath, [SLEDGE_BIN, 'nbd', vol.volumeId, '--api', apiUrl, '--port', port, '--key', 'gw-second'], { timeoutMs: 60_000 });
      expect(second.code, describeRun('second gateway', second)).toBe(1);
      expect(second.stderr).toMatch(/cannot listen/);
      // The running gateway still holds the volume, and nobody else is registered.
      const state = (await http(`${apiUrl}/volumes/${vol.volumeId}/reservations`)).json;
      expect(state.reservation).toEqual({ holder: 'gw-first', type: 'write-exclusive' });
      expect(state.registrants.map((r: { key: string }) => r.key)).toEqual(['gw-first']);
      // And it still serves writes that become durable.
      const r = await nbdsh(first.uri, 'h.pwrite(b"\\x66" * 65536, 0); h.flush()');
      expect(r.code, describeRun('nbdsh on the first gateway', r)).toBe(0);
      expect((await api.read(vol.volumeId, 0, 65536)).equals(Buffer.alloc(65536, 0x66))).toBe(true);
    } finally {
      expect(await first.stop(), first.output()).toBe(0);
    }
  });

  it('a gateway that cannot listen leaves no registration behind', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    // A listen that fails for another reason (a socket path in a directory that does not
    // exist) must not leave the volume reserved by a gateway that never served.
    const r = await run(process.execPath, [SLEDGE_BIN, 'nbd', vol.volumeId, '--api', apiUrl, '--socket', join(dir, 'no-such-dir', 's.sock'), '--key', 'gw-never']);
    expect(r.code, describeRun('gateway on a bad socket path', r)).toBe(1);
    expect(r.stderr).toMatch(/cannot listen/);
    expect((await http(`${apiUrl}/volumes/${vol.volumeId}/reservations`)).json).toMatchObject({ registrants: [], reservation: null });
  });

  it('SIGTERM completes while a real client keeps an idle connection open, and writes everything back', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const gw = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'idle.sock')], ['--max-dirty-age-ms', '0']);
    // nbdsh writes (no FLUSH), says so, then sits on its open connection without a word.
    const client = spawn('nbdsh', ['-u', gw.uri, '-c', 'import sys, time\nh.pwrite(b"\\x77" * 65536, 0)\nprint("written", flush=True)\ntime.sleep(120)'], {
      env: TOOLS_ENV,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let clientOut = '';
    client.stdout.on('data', (d) => (clientOut += d));
    client.stderr.on('data', (d) => (clientOut += d));
    try {
      for (let i = 0; i < 200 && !clientOut.includes('written'); i++) await new Promise((r) => setTimeout(r, 50));
      expect(clientOut).toContain('written');
      const started = Date.now();
      const code = await within<number | null | 'still running'>(gw.stop('SIGTERM'), 20_000, 'still running');
      expect(code, `gateway did not exit within 20 s of SIGTERM with an idle client connected:\n${gw.output()}`).toBe(0);
      expect(Date.now() - started).toBeLessThan(20_000);
      // The unflushed write was written back on the way out.
      expect((await api.read(vol.volumeId, 0, 65536)).equals(Buffer.alloc(65536, 0x77))).toBe(true);
    } finally {
      await gw.stop('SIGKILL');
      client.kill('SIGKILL');
    }
  });

  it('a client rides out a gateway that dies: qemu reconnects to its replacement and loses nothing flushed', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const path = join(dir, 'reconnect.sock');
    const first = await startGateway(apiUrl, vol.volumeId, ['--socket', path], ['--max-dirty-age-ms', '0', '--key', 'gw-before']);
    let second: Awaited<ReturnType<typeof startGateway>> | undefined;
    // qemu's NBD client with reconnect-delay: on a lost connection it keeps requests waiting and
    // connects again to the same socket, for up to 60 s.
    const image = JSON.stringify({
      driver: 'raw',
      file: { driver: 'nbd', server: { type: 'unix', path }, export: vol.volumeId, 'reconnect-delay': 60 },
    });
    const commands = ['write -P 0xa5 0 2M', 'flush', 'sleep 5000', 'read -P 0xa5 0 2M', 'write -P 0x5a 2M 1M', 'flush', 'read -P 0x5a 2M 1M', 'read -P 0xa5 1M 1M'];
    const qemu = spawn('qemu-io', [`json:${image}`, ...commands.flatMap((c) => ['-c', c])], { env: TOOLS_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    qemu.stdout.on('data', (d) => (out += d));
    qemu.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => qemu.once('exit', (code) => resolve(code)));
    try {
      // Once the first 2 MiB are durable (the flush wrote them back), the gateway dies.
      for (let i = 0; i < 600 && (await api.describe(vol.volumeId)).json.commitSeq < 1; i++) await new Promise((r) => setTimeout(r, 100));
      expect((await api.read(vol.volumeId, 0, 2 * MiB)).equals(Buffer.alloc(2 * MiB, 0xa5)), out).toBe(true);
      // Killed while qemu-io still has reads and writes to send (it sleeps 5 s after the flush).
      expect(qemu.exitCode, out).toBeNull();
      expect(await first.stop('SIGKILL')).toBeNull();
      // Its replacement takes over the volume (fencing the dead one) and listens on the same socket.
      second = await startGateway(apiUrl, vol.volumeId, ['--socket', path], ['--max-dirty-age-ms', '0', '--key', 'gw-after']);
      const code = await within(exited, 120_000, -1);
      expect(code, out).toBe(0);
      expect(out).not.toMatch(/Pattern verification failed|error|failed/i);
      expect(out.match(/read 1048576\/1048576|read 2097152\/2097152/g)?.length, out).toBe(3);
    } finally {
      if (qemu.exitCode === null) qemu.kill('SIGKILL');
      if (second) expect(await second.stop(), second.output()).toBe(0);
      await first.stop('SIGKILL');
    }
    // What was written after the reconnect went through the replacement and is durable too.
    expect((await api.read(vol.volumeId, 2 * MiB, MiB)).equals(Buffer.alloc(MiB, 0x5a))).toBe(true);
    const state = (await http(`${apiUrl}/volumes/${vol.volumeId}/reservations`)).json;
    expect(state.registrants.map((r: { key: string }) => r.key)).not.toContain('gw-before');
  });
});
