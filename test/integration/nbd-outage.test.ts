/**
 * A control-plane outage under a mounted file system: ext4 on a loop device over nbdfuse (the
 * gateway's export as a file), the control plane killed with SIGKILL and started again some
 * 10-12 s later, while the file system writes and fsyncs. With the default retry budget (120 s,
 * like iSCSI's replacement timeout) the FLUSH waits out the outage and the file system stays
 * read-write; with a 2 s budget (the old behaviour) the same outage makes the FLUSH fail, and
 * ext4 goes read-only, which shows the harness can see the fault.
 *
 * Needs root (losetup, mount), /dev/fuse and nbdfuse (Debian's libnbd-bin). Everything it
 * mounts is unmounted in `finally` with `umount` (never fusermount3), and every process it
 * starts is stopped by its own id.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Api } from './helpers.ts';
import { describeRun, REPO_ROOT, run, startGateway, TOOLS_ENV, type NbdTarget, type RunResult } from './nbd-tools.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 256 * MiB;
const PLANE_SCRIPT = fileURLToPath(new URL('./nbd-plane.ts', import.meta.url));
/** How long the control plane is away, from its SIGKILL to the restarted one serving. */
const OUTAGE_TARGET_MS = 11_000;

const dir = mkdtempSync(join(tmpdir(), 'sledge-nbd-outage-'));
const stackName = `sledge-nbd-outage-${Date.now().toString(36)}`;
let endpointUrl: string;
/** The control plane serving now: each test kills it and puts a restarted one here. */
const plane = {} as { current: Plane };

beforeAll(async () => {
  endpointUrl = inject('endpointUrl');
  plane.current = await startPlane();
});

afterAll(async () => {
  if (plane.current) await kill(plane.current.child, 'SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

interface Plane {
  apiUrl: string;
  port: number;
  env: Record<string, string>;
  child: ChildProcess;
}

/** The first start deploys a stack; a restart (`after` given) serves its API again on the same port, no earlier than `notBeforeMs`. */
async function startPlane(after?: { plane: Plane; notBeforeMs: number }): Promise<Plane> {
  const args = after ? ['restart', String(after.plane.port), JSON.stringify(after.plane.env), String(after.notBeforeMs)] : ['deploy', stackName];
  const child = spawn(process.execPath, ['--import', 'tsx', PLANE_SCRIPT, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, AWS_ENDPOINT_URL: endpointUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const ready = await new Promise<{ apiUrl: string; env: Record<string, string> }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`control plane did not start within 120 s:\n${out}`)), 120_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d;
      const m = /sledge-nbd-plane (\{.*\})\n/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(JSON.parse(m[1]!));
      }
    });
    child.stderr!.on('data', (d: Buffer) => (out += d));
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`control plane exited (${code ?? signal}) before serving:\n${out}`));
    });
  });
  return { apiUrl: ready.apiUrl, env: ready.env, port: Number(new URL(ready.apiUrl).port), child };
}

async function kill(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  await exited;
}

/** Runs a shell command as root, failing the test with its output when it fails. */
async function must(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const r = await run(cmd, args, { timeoutMs });
  if (r.code !== 0) throw new Error(describeRun(`${cmd} ${args.join(' ')}`, r));
  return r.stdout;
}

/** ext4 on a loop device on nbdfuse's file of the export; `cleanup` undoes every step that was done. */
async function mountExt4(uri: string, name: string, opts: { mkfs: boolean; readOnly?: boolean }): Promise<{ mnt: string; loop: string; fsck?: RunResult; cleanup: () => Promise<void> }> {
  const fuseDir = join(dir, `${name}-fuse`);
  const mnt = join(dir, `${name}-mnt`);
  mkdirSync(fuseDir);
  mkdirSync(mnt);
  const undo: Array<() => Promise<unknown>> = [];
  const cleanup = async () => {
    for (const u of undo.reverse()) await u().catch(() => undefined);
  };
  try {
    const fuse = spawn('nbdfuse', [join(fuseDir, 'disk'), uri], { env: TOOLS_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let fuseOut = '';
    fuse.stdout.on('data', (d) => (fuseOut += d));
    fuse.stderr.on('data', (d) => (fuseOut += d));
    undo.push(async () => {
      await run('umount', [fuseDir]);
      await new Promise((r) => setTimeout(r, 200));
      await kill(fuse, 'SIGTERM');
    });
    const file = join(fuseDir, 'disk');
    for (let i = 0; i < 200 && !(existsSync(file) && statSync(file).size === VOLUME_BYTES); i++) {
      if (fuse.exitCode !== null) throw new Error(`nbdfuse exited ${fuse.exitCode}: ${fuseOut}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // 4 KiB logical sectors: the gateway advertises a 4 KiB minimum block size, and nbdfuse's
    // libnbd (in strict mode) refuses smaller requests, such as ext4's 1 KiB superblock write
    // through a 512-byte-sector loop device.
    const loop = (await must('losetup', ['--find', '--show', '--sector-size', '4096', ...(opts.readOnly ? ['--read-only'] : []), file])).trim();
    undo.push(() => run('losetup', ['-d', loop]));
    // No lazy initialisation: a background thread writing inode tables would muddle the test.
    if (opts.mkfs) await must('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', loop]);
    // A read-only look is checked first, before the mount: a forced, no-change fsck.
    const fsck = opts.readOnly ? await run('e2fsck', ['-fn', loop]) : undefined;
    await must('mount', ['-o', opts.readOnly ? 'ro,noload' : 'errors=remount-ro', loop, mnt]);
    undo.push(() => run('umount', [mnt]));
    return { mnt, loop, cleanup, ...(fsck ? { fsck } : {}) };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** True while `mnt` is mounted read-write. */
function mountedReadWrite(mnt: string): boolean {
  const line = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[1] === mnt);
  if (!line) throw new Error(`${mnt} is not mounted`);
  return line.split(' ')[3]!.split(',').includes('rw');
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** dd with fsync, in the background: the FLUSH that has to survive the outage. */
function ddFsync(src: string, dst: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('dd', [`if=${src}`, `of=${dst}`, 'bs=1M', 'conv=fsync'], { env: TOOLS_ENV, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.once('exit', (code) => resolve({ code, stderr }));
  });
}

/**
 * One run: a fresh volume, ext4 on it through a gateway with `gatewayArgs`, a file written and
 * fsynced, then the control plane killed, a second file written and fsynced while it is away,
 * and the control plane started again. Returns what the second fsync and the mount did.
 */
async function outageRun(name: string, gatewayArgs: string[]) {
  const api = new Api(plane.current.apiUrl);
  const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
  const gw: NbdTarget = await startGateway(plane.current.apiUrl, vol.volumeId, ['--socket', join(dir, `${name}.sock`)], gatewayArgs);
  let fs: Awaited<ReturnType<typeof mountExt4>> | undefined;
  try {
    fs = await mountExt4(gw.uri, name, { mkfs: true });
    const before = randomBytes(8 * MiB);
    const during = randomBytes(4 * MiB);
    writeFileSync(join(dir, `${name}-before`), before);
    writeFileSync(join(dir, `${name}-during`), during);
    const first = await ddFsync(join(dir, `${name}-before`), join(fs.mnt, 'before'));
    expect(first.code, first.stderr).toBe(0);

    // The outage: SIGKILL, a write and its fsync while the API is gone, a restart on the same port.
    const killedAt = Date.now();
    await kill(plane.current.child, 'SIGKILL');
    const pending = ddFsync(join(dir, `${name}-during`), join(fs.mnt, 'during'));
    plane.current = await startPlane({ plane: plane.current, notBeforeMs: killedAt + OUTAGE_TARGET_MS });
    const outageMs = Date.now() - killedAt;
    console.log(`${name}: control plane away for ${(outageMs / 1000).toFixed(1)} s`);
    const second = await pending;
    const readWrite = mountedReadWrite(fs.mnt);
    return { gw, fs, vol, outageMs, second, readWrite, before, during, api };
  } catch (err) {
    await fs?.cleanup();
    await gw.stop('SIGKILL');
    throw err;
  }
}

describe('a control-plane restart under a mounted ext4 (nbdfuse + loop)', () => {
  it('with the default retry budget, the fsync during the outage succeeds and ext4 stays read-write; the data is all there after a remount through a fresh gateway', async () => {
    {
      const r = await outageRun('default', ['--max-dirty-age-ms', '0']);
      try {
        expect(r.outageMs).toBeGreaterThanOrEqual(10_000);
        expect(r.outageMs).toBeLessThan(60_000);
        expect(r.second.code, `fsync during the outage failed:\n${r.second.stderr}\n--- gateway\n${r.gw.output()}`).toBe(0);
        expect(r.readWrite, 'ext4 went read-only').toBe(true);
        // It keeps working as a file system.
        writeFileSync(join(r.fs.mnt, 'after'), 'after the outage');
        await must('sync', ['-f', join(r.fs.mnt, 'after')]);
      } finally {
        await r.fs.cleanup();
      }
      expect(await r.gw.stop('SIGTERM'), r.gw.output()).toBe(0);
      // A fresh gateway, a read-only mount, fsck: every file is there and intact.
      const fresh = await startGateway(plane.current.apiUrl, r.vol.volumeId, ['--socket', join(dir, 'fresh.sock')]);
      try {
        const ro = await mountExt4(fresh.uri, 'fresh', { mkfs: false, readOnly: true });
        try {
          expect(sha(readFileSync(join(ro.mnt, 'before')))).toBe(sha(r.before));
          expect(sha(readFileSync(join(ro.mnt, 'during')))).toBe(sha(r.during));
          expect(readFileSync(join(ro.mnt, 'after'), 'utf8')).toBe('after the outage');
          expect(ro.fsck!.code, describeRun('e2fsck -fn', ro.fsck!)).toBe(0);
        } finally {
          await ro.cleanup();
        }
      } finally {
        expect(await fresh.stop('SIGTERM'), fresh.output()).toBe(0);
      }
    }
  });

  it('with a 2 s retry budget the same outage fails the fsync and ext4 goes read-only (the harness sees the fault)', async () => {
    {
      const r = await outageRun('short', ['--max-dirty-age-ms', '0', '--retry-budget-s', '2']);
      try {
        expect(r.second.code === 0 && r.readWrite, 'the outage should have been visible with a 2 s budget').toBe(false);
        expect(r.gw.output()).toMatch(/FLUSH .* failed/);
      } finally {
        await r.fs.cleanup();
      }
      // It lost the data it could not write back, and says so.
      await r.gw.stop('SIGKILL');
    }
  });
});
