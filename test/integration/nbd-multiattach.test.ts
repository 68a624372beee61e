/**
 * Multi-attach (docs/nbd-gateway.md, "Multi-attach with lease-guarded caches"), with real
 * processes and real clients: a writer gateway and a reader gateway (`sledge nbd --reader`) on
 * one volume, fio writing through the writer and verifying through the reader. Every round
 * writes a new pattern and flushes it before the reader's reads are issued, so a read answered
 * from a line older than that write fails fio's verify. The patterns are random (the seed is
 * printed; replay with SLEDGE_SEED=<seed>).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { seeded } from '../unit/seed.ts';
import { http, testApi, testTempDir } from './helpers.ts';
import { describeRun, run, startGateway, TOOLS_ENV, type NbdTarget } from './nbd-tools.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 16 * MiB;
/** What each round writes and reads: 2,048 blocks of 4 KiB. */
const REGION = '8M';
const BLOCKS_PER_PASS = 2048;

const dir = testTempDir('sledge-nbd-multiattach-');
const { api, apiUrl } = testApi();

/** Runs fio's nbd engine against `target`; returns how many reads it issued. Any verify failure fails the test. */
async function fio(target: NbdTarget, name: string, args: string[]): Promise<number> {
  const out = join(dir, `${name}.json`);
  const r = await run('fio', [`--name=${name}`, '--ioengine=nbd', `--uri=${target.uri}`, '--verify_fatal=1', '--verify_state_save=0', '--output-format=json', `--output=${out}`, ...args]);
  expect(r.code, `${describeRun(`fio ${name}`, r)}\n${existsSync(out) ? readFileSync(out, 'utf8').slice(-2000) : ''}`).toBe(0);
  const job = (JSON.parse(readFileSync(out, 'utf8')) as { jobs: Array<{ error: number; read: { total_ios: number } }> }).jobs[0]!;
  expect(job.error, `fio ${name} reported an error`).toBe(0);
  return job.read.total_ios;
}

/** Writes `pattern` over the region through the writer, and flushes (fio's end_fsync is an NBD FLUSH). */
function writePattern(writer: NbdTarget, name: string, pattern: string): Promise<number> {
  return fio(writer, name, ['--rw=randwrite', '--bs=4k', `--size=${REGION}`, '--iodepth=8', '--verify=pattern', `--verify_pattern=${pattern}`, '--do_verify=0', '--end_fsync=1']);
}

/** Reads the whole region through the reader, 4 KiB at random, verifying every block holds `pattern`. */
function verifyPattern(reader: NbdTarget, name: string, pattern: string): Promise<number> {
  return fio(reader, name, ['--rw=randread', '--bs=4k', `--size=${REGION}`, '--iodepth=8', '--verify=pattern', `--verify_pattern=${pattern}`]);
}

/** Waits until the reader has logged `count` times that it caches (its lease saw the intent closed). */
async function untilCaching(reader: NbdTarget, count: number): Promise<void> {
  const seen = () => reader.output().split('read lease: caching').length - 1;
  for (let i = 0; i < 300 && seen() < count; i++) await new Promise((r) => setTimeout(r, 100));
  expect(seen(), `the reader never started caching again:\n${reader.output()}`).toBeGreaterThanOrEqual(count);
}

/** The numbers on a gateway's exit line. */
function exitStats(output: string): { hits: number; drops: number } {
  const m = /read cache (\d+) hits, .*read lease: \d+ renewals, (\d+) drops/.exec(output);
  expect(m, `no exit line with read-lease counters:\n${output}`).not.toBeNull();
  return { hits: Number(m![1]), drops: Number(m![2]) };
}

describe('multi-attach: a writer and a reader gateway on one volume', () => {
  it('fio verify through the reader sees every write the writer flushed before it, over 12,288 reads', async () => {
    const rng = seeded('multi-attach patterns');
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const writer = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'w1.sock')], ['--key', 'gw-writer', '--max-dirty-age-ms', '0']);
    let reader: NbdTarget | undefined;
    try {
      reader = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'r1.sock')], ['--reader', '--key', 'gw-reader']);
      // A pattern per round that no other round wrote: a stale line cannot pass for this round's.
      const pattern = (round: number) => `0x${(((rng.int(2 ** 24) << 8) | round) >>> 0).toString(16).padStart(8, '0')}`;
      let current = pattern(0);
      await writePattern(writer, 'write-0', current);
      let reads = 0;
      for (let round = 1; round <= 3; round++) {
        // Once no commit came for a while, the reader closes the intent and caches: this pass
        // fills its cache with the current pattern.
        await untilCaching(reader, round);
        reads += await verifyPattern(reader, `read-${round}-before`, current);
        // A new pattern, flushed through the writer; the reads below are issued right after the
        // flush returned, while the reader's cache still holds the old pattern unless the
        // protocol made it drop it first.
        current = pattern(round);
        await writePattern(writer, `write-${round}`, current);
        reads += await verifyPattern(reader, `read-${round}-after`, current);
      }
      expect(reads).toBe(3 * 2 * BLOCKS_PER_PASS);
      expect(await reader.stop(), reader.output()).toBe(0);
      const stats = exitStats(reader.output());
      // The cache served reads (this is not a reader that never caches), and each round's write
      // made it drop what it held.
      expect(stats.hits, reader.output()).toBeGreaterThan(0);
      expect(stats.drops, reader.output()).toBeGreaterThanOrEqual(3);
    } finally {
      await reader?.stop('SIGKILL');
      expect(await writer.stop(), writer.output()).toBe(0);
    }
  });

  it('a reader stopped past its lease (SIGSTOP) serves nothing stale when resumed', async () => {
    const rng = seeded('multi-attach SIGSTOP patterns');
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const writer = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'w2.sock')], ['--key', 'gw-writer-2', '--max-dirty-age-ms', '0']);
    let reader: NbdTarget | undefined;
    let client: ChildProcess | undefined;
    let stopped = false;
    try {
      reader = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'r2.sock')], ['--reader', '--key', 'gw-reader-2', '--lease-s', '2']);
      const before = `0x${(((rng.int(2 ** 24) << 8) | 0xa1) >>> 0).toString(16).padStart(8, '0')}`;
      const after = `0x${(((rng.int(2 ** 24) << 8) | 0xb2) >>> 0).toString(16).padStart(8, '0')}`;
      await writePattern(writer, 'stop-write-a', before);
      await untilCaching(reader, 1);
      // The reader caches the region: every line of it, after a pass over all its blocks.
      await verifyPattern(reader, 'stop-read-a', before);
      // A client connected to the reader before it stops, whose next read is sent while the
      // reader is stopped: on SIGCONT that read is in the socket before the reader's renewal
      // can be answered, so only the lease's own clock keeps it from the cache.
      const trigger = join(dir, 'read-now');
      const script = [
        'import os, time',
        'h.pread(4096, 0)',
        'print("connected", flush=True)',
        `while not os.path.exists(${JSON.stringify(trigger)}): time.sleep(0.005)`,
        `b = h.pread(${8 * MiB}, 0)`,
        'blocks = [b[i:i + 4096] for i in range(0, len(b), 4096)]',
        `old = bytes.fromhex("${before.slice(2)}") * 1024`,
        `new = bytes.fromhex("${after.slice(2)}") * 1024`,
        'print("stale=%d fresh=%d" % (sum(x == old for x in blocks), sum(x == new for x in blocks)), flush=True)',
      ].join('\n');
      client = spawn('nbdsh', ['-u', reader.uri, '-c', script], { env: TOOLS_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
      let clientOut = '';
      client.stdout!.on('data', (d) => (clientOut += d));
      client.stderr!.on('data', (d) => (clientOut += d));
      const clientExit = new Promise<number | null>((resolve) => client!.once('exit', (code) => resolve(code)));
      for (let i = 0; i < 300 && !clientOut.includes('connected'); i++) await new Promise((r) => setTimeout(r, 50));
      expect(clientOut).toContain('connected');
      process.kill(reader.pid!, 'SIGSTOP');
      stopped = true;
      // The writer's commit needs the stopped reader's acknowledgement or its lease to run out:
      // it waits out the lease (2 s), then commits, and the flush returns.
      await writePattern(writer, 'stop-write-b', after);
      writeFileSync(trigger, '');
      await new Promise((r) => setTimeout(r, 300)); // the client's read is now waiting in the stopped reader's socket
      process.kill(reader.pid!, 'SIGCONT');
      stopped = false;
      expect(await clientExit, clientOut).toBe(0);
      expect(clientOut).toContain(`stale=0 fresh=${BLOCKS_PER_PASS}`);
      // And fio, verifying every block again through the resumed reader.
      await verifyPattern(reader, 'stop-read-b', after);
      expect(await reader.stop(), reader.output()).toBe(0);
      const stats = exitStats(reader.output());
      expect(stats.hits, reader.output()).toBeGreaterThan(0);
      expect(stats.drops, reader.output()).toBeGreaterThanOrEqual(1);
    } finally {
      if (stopped) process.kill(reader!.pid!, 'SIGCONT');
      client?.kill('SIGKILL');
      await reader?.stop('SIGKILL');
      expect(await writer.stop(), writer.output()).toBe(0);
    }
  });
  it('several roots: clients of a writer that died reconnect to a reader promoted in its place and lose nothing flushed', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const writer = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'w3.sock')], ['--key', 'gw-writer-3', '--max-dirty-age-ms', '0']);
    let reader: NbdTarget | undefined;
    let qemu: ChildProcess | undefined;
    try {
      reader = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'r3.sock')], ['--reader', '--key', 'gw-reader-3']);
      // The address clients use: a path that leads to the writer now, and to the promoted reader
      // after the failover, as a load balancer or a DNS name would.
      const entry = join(dir, 'entry.sock');
      symlinkSync(join(dir, 'w3.sock'), entry);
      const image = JSON.stringify({
        driver: 'raw',
        file: { driver: 'nbd', server: { type: 'unix', path: entry }, export: vol.volumeId, 'reconnect-delay': 60 },
      });
      const commands = ['write -P 0xa5 0 2M', 'flush', 'sleep 6000', 'read -P 0xa5 0 2M', 'write -P 0x5a 2M 1M', 'flush', 'read -P 0x5a 2M 1M', 'read -P 0xa5 1M 1M'];
      qemu = spawn('qemu-io', [`json:${image}`, ...commands.flatMap((c) => ['-c', c])], { env: TOOLS_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      qemu.stdout!.on('data', (d) => (out += d));
      qemu.stderr!.on('data', (d) => (out += d));
      const exited = new Promise<number | null>((resolve) => qemu!.once('exit', (code) => resolve(code)));
      for (let i = 0; i < 600 && (await api.describe(vol.volumeId)).json.commitSeq < 1; i++) await new Promise((r) => setTimeout(r, 100));
      expect((await api.read(vol.volumeId, 0, 2 * MiB)).equals(Buffer.alloc(2 * MiB, 0xa5)), out).toBe(true);
      // The writer dies while qemu-io still has reads and writes to send; the reader, already
      // serving the volume, is promoted, and the clients' address now leads to it.
      await writer.stop('SIGKILL');
      process.kill(reader.pid!, 'SIGUSR1');
      for (let i = 0; i < 300 && !reader.output().includes('promoted to the writer'); i++) await new Promise((r) => setTimeout(r, 50));
      expect(reader.output()).toContain('promoted to the writer');
      unlinkSync(entry);
      symlinkSync(join(dir, 'r3.sock'), entry);
      expect(await exited, out).toBe(0);
      expect(out).not.toMatch(/error|failed/i);
      expect(out.match(/read \d+\/\d+ bytes/g), out).toHaveLength(3);
      expect((await api.read(vol.volumeId, 0, 2 * MiB)).equals(Buffer.alloc(2 * MiB, 0xa5)), 'flushed through the dead writer').toBe(true);
      expect((await api.read(vol.volumeId, 2 * MiB, MiB)).equals(Buffer.alloc(MiB, 0x5a)), 'flushed through the promoted reader').toBe(true);
      const state = (await http(`${apiUrl}/volumes/${vol.volumeId}/reservations`)).json;
      expect(state.reservation).toEqual({ holder: 'gw-reader-3', type: 'write-exclusive' });
      expect(await reader.stop(), reader.output()).toBe(0);
    } finally {
      qemu?.kill('SIGKILL');
      await reader?.stop('SIGKILL');
      await writer.stop('SIGKILL');
    }
  });
});
