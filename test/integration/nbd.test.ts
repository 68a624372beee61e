/**
 * The NBD gateway proven by clients no one here wrote: nbdinfo, qemu-io, qemu-img, fio's nbd
 * engine, nbdcopy and nbdsh (libnbd), all from Debian's packages (.ci/run installs them).
 *
 * The same harness runs against the Sledge gateway (started through the real CLI, talking HTTP
 * to the local control plane) and against `nbdkit memory`, a known-good server: a check that
 * passes on nbdkit and fails on the gateway is a gateway bug, and a check that fails on both is
 * a harness bug. Tests in a file run in order; each uses its own region of the export.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seeded } from '../unit/seed.ts';
import { http, testApi, testTempDir } from './helpers.ts';
import { describeRun, NBDSH_ERRNO, nbdsh, run, SLEDGE_BIN, startGateway, startNbdkitMemory, type NbdTarget } from './nbd-tools.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const EXPORT_BYTES = 64 * MiB;

const dir = testTempDir('sledge-nbd-test-');
const { api, apiUrl } = testApi();
let socketCount = 0;
const socketPath = () => join(dir, `s${socketCount++}.sock`);

interface Harness {
  name: string;
  sledge: boolean;
  start(): Promise<NbdTarget>;
}

const harnesses: Harness[] = [
  {
    name: 'sledge gateway',
    sledge: true,
    async start() {
      const vol = await api.createVolume({ sizeBytes: EXPORT_BYTES });
      return startGateway(apiUrl, vol.volumeId, ['--socket', socketPath()]);
    },
  },
  {
    name: 'nbdkit memory',
    sledge: false,
    start: () => startNbdkitMemory(socketPath(), EXPORT_BYTES),
  },
];

/** A minimal raw client for what the real clients never send: option errors and broken requests. */
class RawClient {
  private buf = Buffer.alloc(0);
  private closed = false;
  private wake: (() => void) | null = null;
  readonly socket: net.Socket;

  constructor(path: string) {
    this.socket = net.createConnection({ path });
    this.socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    this.socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    this.socket.on('error', () => undefined);
  }

  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length} of ${n} bytes`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves true when the server closes the connection within `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    return this.closed;
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  option(option: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'ascii');
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  /** One option reply: its type and data. */
  async reply(): Promise<{ type: number; data: Buffer }> {
    const h = await this.read(20);
    expect(h.readBigUInt64BE(0)).toBe(0x3e889045565a9n);
    const length = h.readUInt32BE(16);
    return { type: h.readUInt32BE(12), data: Buffer.from(await this.read(length)) };
  }

  /** Handshake up to the transmission phase with NBD_OPT_GO on the default export. */
  async go(): Promise<void> {
    const greeting = await this.read(18);
    expect(greeting.subarray(0, 16).toString('ascii')).toBe('NBDMAGICIHAVEOPT');
    this.write(Buffer.from([0, 0, 0, 1])); // NBD_FLAG_C_FIXED_NEWSTYLE
    this.option(99); // an option no server knows
    expect((await this.reply()).type, 'unknown option -> NBD_REP_ERR_UNSUP').toBe(0x80000001);
    this.option(7, Buffer.from([0, 0, 0, 0, 0, 0])); // NBD_OPT_GO, default export, no info requests
    for (let i = 0; i < 16; i++) {
      const r = await this.reply();
      if (r.type === 1) return; // NBD_REP_ACK: transmission phase
      expect(r.type, 'NBD_REP_INFO before the ACK').toBe(3);
    }
    throw new Error('no NBD_REP_ACK after 16 replies');
  }

  close(): void {
    this.socket.destroy();
  }
}

describe.each(harnesses)('NBD clients against $name', (harness) => {
  let target: NbdTarget;

  beforeAll(async () => {
    target = await harness.start();
  });

  afterAll(async () => {
    // The gateway writes back and exits 0 on SIGTERM; anything else is a failure.
    expect(await target.stop('SIGTERM'), target.output()).toBe(0);
  });

  it('nbdinfo reports the size and the flags', async () => {
    const r = await run('nbdinfo', ['--json', target.uri]);
    expect(r.code, describeRun('nbdinfo', r)).toBe(0);
    const info = JSON.parse(r.stdout).exports[0];
    expect(info['export-size']).toBe(EXPORT_BYTES);
    expect(info.is_read_only).toBe(false);
    expect(info.can_flush).toBe(true);
    expect(info.can_fua).toBe(true);
    expect(info.can_trim).toBe(true);
    expect(info.can_zero).toBe(true);
    if (harness.sledge) {
      // Truthful about what it lacks, and tells clients to align to the volume's 4 KiB blocks.
      expect(info.can_multi_conn).toBe(true);
      expect(info.can_cache).toBe(true);
      expect(info.can_fast_zero).toBe(true);
      expect(info.can_df).toBe(false);
      expect(info.contexts).toEqual(['base:allocation']);
      expect(info.block_size_minimum).toBe(4096);
      expect(info.block_size_preferred).toBe(4096);
      expect(info.block_size_maximum).toBe(32 * MiB);
      expect(info.description).toMatch(/^Sledge volume vol-/);
    }
  });

  const qemuScript = [
    'write -P 0xa1 0 64k',
    'read -P 0xa1 0 64k',
    // 512-byte granularity inside a 4 KiB block: read-modify-write, by qemu or the gateway.
    'write -P 0xa2 512 1536',
    'read -P 0xa2 512 1536',
    'read -P 0xa1 0 512',
    'read -P 0xa1 2048 2048',
    'aio_write -P 0xb1 1M 256k',
    'aio_write -P 0xb2 2M 128k',
    'aio_write -z 1536k 64k',
    'aio_flush',
    'read -P 0xb1 1M 256k',
    'read -P 0xb2 2M 128k',
    'read -P 0 1536k 64k',
    'write -P 0xc1 3M 64k',
    'discard 3M 64k',
    'read -P 0 3M 64k',
    'write -P 0xc2 3M 64k',
    `write -z ${3 * MiB + 16 * KiB} 32k`,
    'read -P 0xc2 3M 16k',
    `read -P 0 ${3 * MiB + 16 * KiB} 32k`,
    `read -P 0xc2 ${3 * MiB + 48 * KiB} 16k`,
    // A FUA write, a discard over part of it, then an aio FUA write inside the discarded part.
    'write -f -P 0xd1 3584k 128k',
    'discard 3584k 64k',
    `aio_write -f -P 0xd2 ${3584 * KiB + 32 * KiB} 16k`,
    'aio_flush',
    'aio_read -P 0xb1 1M 64k',
    'aio_read -P 0xa1 8k 56k',
    'aio_flush',
    'read -P 0 3584k 32k',
    `read -P 0xd2 ${3584 * KiB + 32 * KiB} 16k`,
    `read -P 0 ${3584 * KiB + 48 * KiB} 16k`,
    `read -P 0xd1 ${3584 * KiB + 64 * KiB} 64k`,
    'flush',
  ];

  it('qemu-io pattern writes, reads, discards, write-zeroes and flushes, sync and aio, all verify', async () => {
    const r = await run('qemu-io', ['-f', 'raw', target.uri, ...qemuScript.flatMap((c) => ['-c', c])]);
    expect(r.code, describeRun('qemu-io', r)).toBe(0);
    expect(r.stdout).not.toMatch(/Pattern verification failed|error|failed/i);
    // The verified reads each printed their line; a command that silently did nothing would not.
    expect(r.stdout.match(/^read \d+\/\d+ bytes/gm)?.length).toBe(qemuScript.filter((c) => /^(aio_)?read /.test(c)).length);
    // A second, fresh connection sees the same bytes.
    const again = await run('qemu-io', ['-f', 'raw', target.uri, '-c', 'read -P 0xa1 0 512', '-c', 'read -P 0xb1 1M 256k', '-c', `read -P 0xd1 ${3584 * KiB + 64 * KiB} 64k`]);
    expect(again.code, describeRun('qemu-io (second connection)', again)).toBe(0);
  });

  it('a qemu-io read with the wrong pattern fails (the harness can fail)', async () => {
    const r = await run('qemu-io', ['-f', 'raw', target.uri, '-c', 'read -P 0xa2 0 4k']);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toMatch(/Pattern verification failed at offset 0/);
  });

  async function fio(name: string, args: string[]): Promise<any> {
    const rng = seeded(`fio ${name} on ${harness.name}`);
    const out = join(dir, `${name}-${socketCount}.json`);
    const r = await run('fio', [`--name=${name}`, '--ioengine=nbd', `--uri=${target.uri}`, `--randseed=${rng.seed}`, '--verify_fatal=1', '--verify_state_save=0', '--output-format=json', `--output=${out}`, ...args]);
    expect(r.code, describeRun(`fio ${name}`, r)).toBe(0);
    const job = JSON.parse(readFileSync(out, 'utf8')).jobs[0];
    expect(job.error, `fio ${name} reported an error`).toBe(0);
    return job;
  }

  it('fio random writes verify clean with crc32c', async () => {
    const job = await fio('randwrite', ['--rw=randwrite', '--bs=16k', '--offset=8M', '--size=4M', '--iodepth=16', '--verify=crc32c', '--do_verify=1']);
    expect(job.write.io_bytes).toBe(4 * MiB);
    // The verify pass read back every block it wrote.
    expect(job.read.io_bytes).toBe(4 * MiB);
  });

  it('fio random read-write verifies clean with md5', async () => {
    const job = await fio('randrw', ['--rw=randrw', '--bsrange=4k-64k', '--offset=16M', '--size=4M', '--iodepth=8', '--verify=md5', '--do_verify=1']);
    expect(job.write.io_bytes).toBeGreaterThan(0);
    expect(job.read.io_bytes).toBeGreaterThan(0);
  });

  it('unaligned writes and zeroes through libnbd match a byte model', async () => {
    const rng = seeded(`nbdsh unaligned on ${harness.name}`);
    // strict_mode 0 lets libnbd send requests that ignore the advertised minimum block size,
    // as clients that never asked for block sizes do; the server must read-modify-write.
    const script = `
import random
random.seed(${rng.seed})
h.set_strict_mode(0)
base = 24 * 1024 * 1024
span = 1024 * 1024
model = bytearray(h.pread(span, base))
for step in range(150):
    off = random.randrange(span - 1)
    n = random.randint(1, min(20000, span - off))
    if random.random() < 0.7:
        data = random.randbytes(n)
        h.pwrite(data, base + off)
        model[off:off + n] = data
    else:
        h.zero(n, base + off)
        model[off:off + n] = bytes(n)
    if random.random() < 0.1:
        h.flush()
    o = random.randrange(span - 1)
    m = random.randint(1, min(30000, span - o))
    got = h.pread(m, base + o)
    assert got == bytes(model[o:o + m]), "step %d: read %d+%d differs" % (step, o, m)
h.flush()
assert h.pread(span, base) == bytes(model), "final read differs"
print("model ok")
`;
    const r = await nbdsh(target.uri, script);
    expect(r.code, describeRun('nbdsh', r)).toBe(0);
    expect(r.stdout).toContain('model ok');
  });

  it('a malformed request closes only its own connection', async () => {
    const path = /socket=([^&]+)/.exec(target.uri)![1]!;
    const bad = new RawClient(path);
    await bad.go();
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0xdeadbeef, 0); // not NBD_REQUEST_MAGIC
    bad.write(req);
    expect(await bad.closedWithin(10_000), 'server hangs up on a bad request magic').toBe(true);
    if (harness.sledge) {
      // A WRITE whose payload is over the limit can only be refused by hanging up.
      const huge = new RawClient(path);
      await huge.go();
      const w = Buffer.alloc(28);
      w.writeUInt32BE(0x25609513, 0);
      w.writeUInt16BE(1, 6); // NBD_CMD_WRITE
      w.writeUInt32BE(64 * MiB, 24);
      huge.write(w);
      expect(await huge.closedWithin(10_000), 'server hangs up on a 64 MiB WRITE').toBe(true);
    }
    const garbage = new RawClient(path);
    await garbage.read(18);
    garbage.write(Buffer.from([0, 0, 0, 0x80])); // a client flag no server offered
    expect(await garbage.closedWithin(10_000), 'server hangs up on unknown client flags').toBe(true);
    // The server still serves everyone else.
    const r = await run('qemu-io', ['-f', 'raw', target.uri, '-c', 'read -P 0xa1 0 512']);
    expect(r.code, describeRun('qemu-io after malformed clients', r)).toBe(0);
  });

  it('nbdcopy of the whole export to a file is identical to what was written (qemu-img compare)', async () => {
    const rng = seeded(`nbdcopy on ${harness.name}`);
    const src = Buffer.alloc(EXPORT_BYTES);
    // Random data in a few places and zeros elsewhere, so nbdcopy sends both writes and zeroes.
    for (let i = 0; i < 6; i++) randomBytes(MiB + rng.int(64) * 4096).copy(src, rng.int(60) * MiB);
    const srcFile = join(dir, `nbdcopy-src-${socketCount}.img`);
    const outFile = join(dir, `nbdcopy-out-${socketCount}.img`);
    writeFileSync(srcFile, src);
    const w = await run('nbdcopy', ['--flush', srcFile, target.uri]);
    expect(w.code, describeRun('nbdcopy file -> nbd', w)).toBe(0);
    const c = await run('nbdcopy', [target.uri, outFile]);
    expect(c.code, describeRun('nbdcopy nbd -> file', c)).toBe(0);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srcFile, outFile]);
    expect(cmp.code, describeRun('qemu-img compare', cmp)).toBe(0);
    expect(cmp.stdout).toContain('Images are identical');
    // And the harness can tell a difference: one flipped byte is found.
    const bad = readFileSync(outFile);
    bad.writeUInt8(bad.readUInt8(40 * MiB + 123) ^ 0xff, 40 * MiB + 123);
    writeFileSync(outFile, bad);
    const differ = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srcFile, outFile]);
    expect(differ.code, describeRun('qemu-img compare (flipped byte)', differ)).toBe(1);
  });
});

describe('sledge gateway: durability, shutdown, errors, CLI', () => {
  const VOLUME_BYTES = 16 * MiB;

  it('data written and flushed through one gateway is read back byte-identical by a fresh gateway process', async () => {
    const rng = seeded('fresh gateway');
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const src = Buffer.alloc(VOLUME_BYTES);
    for (let i = 0; i < 4; i++) randomBytes(MiB + rng.int(256) * 4096).copy(src, rng.int(12) * MiB);
    const srcFile = join(dir, 'fresh-src.img');
    writeFileSync(srcFile, src);
    const first = await startGateway(apiUrl, vol.volumeId, ['--socket', socketPath()], ['--max-dirty-age-ms', '0']);
    const w = await run('nbdcopy', ['--flush', srcFile, first.uri]);
    expect(w.code, describeRun('nbdcopy', w)).toBe(0);
    // SIGKILL: no shutdown write-back. Only FLUSH can have made the data durable.
    await first.stop('SIGKILL');
    const second = await startGateway(apiUrl, vol.volumeId, ['--socket', socketPath()]);
    try {
      const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srcFile, second.uri]);
      expect(cmp.code, describeRun('qemu-img compare against a fresh gateway', cmp)).toBe(0);
      expect(cmp.stdout).toContain('Images are identical');
    } finally {
      expect(await second.stop()).toBe(0);
    }
  });

  it('a second gateway attaching to the same volume fences the first', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const first = await startGateway(apiUrl, vol.volumeId, ['--socket', socketPath()], ['--max-dirty-age-ms', '0', '--key', 'gw-first']);
    const second = await startGateway(apiUrl, vol.volumeId, ['--socket', socketPath()], ['--max-dirty-age-ms', '0', '--key', 'gw-second']);
    try {
      expect(second.output()).toMatch(/attached with reservation key gw-second, preempting gw-first/);
      const state = (await http(`${apiUrl}/volumes/${vol.volumeId}/reservations`)).json;
      expect(state.reservation).toEqual({ holder: 'gw-second', type: 'write-exclusive' });
      // The fenced gateway acknowledges the write into its cache, but its FLUSH fails: the
      // commit condition refuses its write-back. It never silently overwrites the newcomer.
      const r1 = await nbdsh(first.uri, `${NBDSH_ERRNO}\nh.pwrite(b"\\x44" * 65536, 0)\nprint(code(lambda: h.flush()))`);
      expect(r1.code, describeRun('nbdsh on the fenced gateway', r1)).toBe(0);
      expect(r1.stdout.trim()).toBe('EIO');
      const r2 = await nbdsh(second.uri, 'h.pwrite(b"\\x55" * 65536, 0); h.flush()');
      expect(r2.code, describeRun('nbdsh on the new gateway', r2)).toBe(0);
      expect((await api.read(vol.volumeId, 0, 65536)).equals(Buffer.alloc(65536, 0x55))).toBe(true);
    } finally {
      // The fenced one cannot write its dirty data back: it says so and exits 1.
      expect(await first.stop()).toBe(1);
      expect(await second.stop()).toBe(0);
    }
    // A clean stop gives the volume back.
    expect((await http(`${apiUrl}/volumes/${vol.volumeId}/reservations`)).json).toMatchObject({ registrants: [], reservation: null });
  });

  it('a crash loses only unflushed writes, like a disk cache; SIGTERM writes them back', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const path = socketPath();
    const gw = await startGateway(apiUrl, vol.volumeId, ['--socket', path], ['--max-dirty-age-ms', '0']);
    // Flushed, then not flushed. nbdsh disconnects without FLUSH.
    let r = await nbdsh(gw.uri, 'h.pwrite(b"\\x11" * 65536, 0); h.flush(); h.pwrite(b"\\x22" * 65536, 65536)');
    expect(r.code, describeRun('nbdsh write', r)).toBe(0);
    await gw.stop('SIGKILL');
    // The killed gateway left its socket file behind; a new one on the same path replaces it.
    const after = await startGateway(apiUrl, vol.volumeId, ['--socket', path], ['--max-dirty-age-ms', '0']);
    r = await nbdsh(after.uri, 'assert h.pread(65536, 0) == b"\\x11" * 65536, "flushed data lost"\nassert h.pread(65536, 65536) == bytes(65536), "unflushed data survived a crash?"\nh.pwrite(b"\\x33" * 65536, 131072)');
    expect(r.code, describeRun('nbdsh after crash', r)).toBe(0);
    // A clean stop writes dirty data back.
    expect(await after.stop('SIGTERM'), after.output()).toBe(0);
    expect(after.output()).toMatch(/1 batches written back \(65536 data bytes/);
    expect((await api.read(vol.volumeId, 131072, 65536)).equals(Buffer.alloc(65536, 0x33))).toBe(true);
  });

  it('a segment of writes is written back without FLUSH, as one batch', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const gw = await startGateway(apiUrl, vol.volumeId, ['--socket', socketPath()], ['--max-dirty-age-ms', '0']);
    try {
      // 16 writes of 256 KiB, no FLUSH; nbdsh disconnects without one either.
      const r = await nbdsh(gw.uri, 'for i in range(16): h.pwrite(bytes([i + 1]) * 262144, i * 262144)');
      expect(r.code, describeRun('nbdsh', r)).toBe(0);
      let commitSeq = 0;
      for (let i = 0; i < 100 && commitSeq === 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        commitSeq = (await api.describe(vol.volumeId)).json.commitSeq;
      }
      expect(commitSeq, '4 MiB of writes make exactly one commit').toBe(1);
      const data = await api.read(vol.volumeId, 0, 4 * MiB);
      for (let i = 0; i < 16; i++) expect(data[i * 262144 + 1000]).toBe(i + 1);
    } finally {
      expect(await gw.stop()).toBe(0);
    }
  });

  it('NBD_CMD_CACHE reads a range into the clean cache, so reading it then asks the API nothing more', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const data = randomBytes(3 * MiB);
    await api.write(vol.volumeId, MiB, data);
    const gw = await startGateway(apiUrl, vol.volumeId, ['--socket', socketPath()]);
    let stopped: number | null = null;
    try {
      const script = `
import hashlib
h.cache(${3 * MiB}, ${MiB})
print("cached")
got = h.pread(${3 * MiB}, ${MiB})
print("sha", hashlib.sha256(got).hexdigest())
h.cache(${MiB}, ${VOLUME_BYTES - MiB})
`;
      const r = await nbdsh(gw.uri, script);
      expect(r.code, describeRun('nbdsh', r)).toBe(0);
      expect(r.stdout).toContain('cached');
      expect(r.stdout).toContain(`sha ${createHash('sha256').update(data).digest('hex')}`);
    } finally {
      stopped = await gw.stop();
    }
    expect(stopped, gw.output()).toBe(0);
    // The first CACHE is one API read of its 3 MiB (inside one 4 MiB window), the second one of
    // the last MiB; the READ of the cached range sends none.
    const m = /(\d+) API reads \((\d+) bytes, (\d+) ahead, (\d+) for CACHE,/.exec(gw.output());
    expect(m, gw.output()).not.toBeNull();
    const [, reads, bytes, ahead, forCache] = m!.map(Number);
    expect({ reads, bytes, ahead, forCache }).toEqual({ reads: 2, bytes: 4 * MiB, ahead: 0, forCache: 2 });
  });

  it('answers out-of-range requests with NBD errors and keeps serving; also over TCP', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const gw = await startGateway(apiUrl, vol.volumeId, ['--port', '0']);
    try {
      expect(gw.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/vol-/);
      const info = await run('nbdinfo', ['--size', gw.uri]);
      expect(info.code, describeRun('nbdinfo', info)).toBe(0);
      expect(info.stdout.trim()).toBe(String(VOLUME_BYTES));
      const script = `
import os
h.set_strict_mode(0)
size = h.get_size()
${NBDSH_ERRNO}
print("write", code(lambda: h.pwrite(b"x" * 4096, size - 2048)))
print("read", code(lambda: h.pread(4096, size)))
print("trim", code(lambda: h.trim(8192, size)))
print("ok", code(lambda: h.pwrite(b"y" * 4096, 0)), bytes(h.pread(1, 0)))
# One 10 MiB WRITE becomes three batches (4 MiB of data each at most); after the FLUSH the
# cache is empty, so the 10 MiB READ is three API reads (4 MiB each at most), run in parallel.
big = os.urandom(10 * 1024 * 1024)
h.pwrite(big, 8192)
h.flush()
print("big", h.pread(len(big), 8192) == big, h.pread(len(big) - 1000, 8192 + 500) == big[500:-500])
`;
      const r = await nbdsh(gw.uri, script);
      expect(r.code, describeRun('nbdsh', r)).toBe(0);
      expect(r.stdout).toContain('write ENOSPC');
      expect(r.stdout).toContain('read EINVAL');
      expect(r.stdout).toContain('trim ENOSPC');
      expect(r.stdout).toContain("ok 0 b'y'");
      expect(r.stdout).toContain('big True True');
      expect((await api.describe(vol.volumeId)).json.commitSeq, 'a 4 KiB write and a 10 MiB write, written back together, make three batches').toBe(3);
    } finally {
      expect(await gw.stop()).toBe(0);
    }
  });

  it('an API that refuses the write-back turns FLUSH into EIO; the gateway keeps serving and reports the loss on exit', async () => {
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const gw = await startGateway(apiUrl, vol.volumeId, ['--socket', socketPath()], ['--max-dirty-age-ms', '0']);
    let r = await nbdsh(gw.uri, 'h.pwrite(b"\\x44" * 65536, 0)');
    expect(r.code, describeRun('nbdsh write', r)).toBe(0);
    // The volume goes away under the gateway: every batch now gets 404.
    expect((await http(`${apiUrl}/volumes/${vol.volumeId}`, { method: 'DELETE' })).status).toBe(202);
    const script = `
${NBDSH_ERRNO}
print("flush", code(lambda: h.flush()))
print("cached", h.pread(65536, 0) == b"\\x44" * 65536)
print("uncached", code(lambda: h.pread(4096, 1048576)))
print("flush again", code(lambda: h.flush()))
`;
    r = await nbdsh(gw.uri, script);
    expect(r.code, describeRun('nbdsh after delete', r)).toBe(0);
    expect(r.stdout).toContain('flush EIO');
    expect(r.stdout).toContain('cached True');
    expect(r.stdout).toContain('uncached EIO');
    expect(r.stdout).toContain('flush again EIO');
    expect(await gw.stop('SIGTERM'), gw.output()).toBe(1);
    expect(gw.output()).toMatch(/stopped WITH DATA LOSS: 65536 dirty bytes/);
  });

  it('the CLI explains usage errors and a missing volume', async () => {
    let r = await run(process.execPath, [SLEDGE_BIN, 'nbd']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('sledge nbd takes exactly one volume id');
    r = await run(process.execPath, [SLEDGE_BIN, 'nbd', 'vol-x', '--api', apiUrl, '--port', '1', '--socket', '/tmp/x']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('either --socket or --port');
    const notASocket = join(dir, 'regular-file');
    writeFileSync(notASocket, 'keep me');
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    r = await run(process.execPath, [SLEDGE_BIN, 'nbd', vol.volumeId, '--api', apiUrl, '--socket', notASocket]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('is not a stale socket');
    expect(readFileSync(notASocket, 'utf8')).toBe('keep me');
    r = await run(process.execPath, [SLEDGE_BIN, 'nbd', 'vol-0000000000000000', '--api', apiUrl, '--socket', socketPath()]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('volume vol-0000000000000000 does not exist');
  });
});
