/**
 * The NBD gateway section of `npm run bench`.
 *
 * Speed: the gateway against s3backer (the S3-backed block device people use today) on the
 * same local endpoint, in one run, as ratios: sequential write, cold sequential read, warm
 * re-read, 4 KiB random reads, and S3 GETs per MiB read (`compareWithS3backer`). Writes end
 * with a FLUSH (`end_fsync=1`), so the figures are for durable writes, not for filling a cache.
 * `SLEDGE_BENCH_NBD_MIB` sets the size (default 512).
 *
 * Cost: the gateway runs as a child process (the real CLI) and talks HTTP to the API that
 * bench/main.ts runs in-process, so every AWS request it causes is counted exactly there.
 * Small runs are measured and scaled linearly; the table says what was measured.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RequestCounts } from '#shared/aws/clients.ts';
import { run, startGateway, type NbdTarget } from '../test/integration/nbd-tools.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The size of the s3backer comparison: 512 MiB, as in issue 16. */
const COMPARE_MIB = Number(process.env.SLEDGE_BENCH_NBD_MIB ?? 512);
/** fio's random seed, fixed so runs are comparable. */
const FIO_SEED = 20240601;

export interface NbdBenchContext {
  apiUrl: string;
  /** The local AWS endpoint the API uses (s3backer is pointed at it too). */
  endpointUrl: string;
  createBucket(name: string): Promise<void>;
  createVolume(api: string, sizeBytes: number, extra?: Record<string, unknown>): Promise<string>;
  resetRequestCounts(): void;
  requestCounts(): RequestCounts;
  /** Formats request counts scaled by `scale` as a table row labelled `label`. */
  costRow(label: string, counts: RequestCounts, scale: number): Record<string, string | number>;
  table(rows: Array<Record<string, string | number>>): void;
  section(title: string): void;
  /**
   * Waits for the background work the writes queued, then folds what is left of a folding
   * volume's tail (docs/page-map.md, "Folding"), so that a row carries its folding work.
   */
  settle(volumeId: string): Promise<void>;
  /** False runs only the request-cost rows (`npm run bench -- nbd-cost`), not the s3backer comparison. */
  compare: boolean;
}

interface FioJob {
  read: { bw_bytes: number; iops: number; io_bytes: number; total_ios: number };
  write: { bw_bytes: number; iops: number; io_bytes: number; total_ios: number };
  sync?: { total_ios: number };
  job_runtime: number;
}

async function fio(uri: string, name: string, args: string[], outDir: string, target: string[] = ['--ioengine=nbd', `--uri=${uri}`], timeoutMs = 300_000): Promise<FioJob> {
  const out = join(outDir, `${name.replace(/\W+/g, '-')}.json`);
  const r = await run('fio', [`--name=${name.replace(/\W+/g, '-')}`, ...target, `--randseed=${FIO_SEED}`, '--output-format=json', `--output=${out}`, ...args], {
    timeoutMs,
  });
  if (r.code !== 0) throw new Error(`fio ${name} on ${uri} exited ${r.code}: ${r.stderr.slice(-2000)}`);
  return JSON.parse(readFileSync(out, 'utf8')).jobs[0] as FioJob;
}

/** The fio job options both sides run: 1 MiB requests, 8 in flight, fresh random data in every write. */
const SEQ = ['--bs=1M', `--size=${COMPARE_MIB}M`, '--iodepth=8', '--refill_buffers'];
const RAND = ['--rw=randread', '--bs=4k', `--size=${COMPARE_MIB}M`, '--iodepth=32', '--runtime=10', '--time_based'];

interface Side {
  /** Runs a fio job against this side's device; `args` are the job's own options. */
  fio(name: string, args: string[]): Promise<FioJob>;
  /** Drops every cache: restarts the gateway, or remounts s3backer. */
  restart(): Promise<void>;
  /** S3 GETs sent so far. */
  gets(): Promise<number>;
  /** The device's process: the gateway, or s3backer. */
  pid(): number | undefined;
  stop(): Promise<void>;
}

/** CPU milliseconds a process has used (utime + stime of /proc/<pid>/stat, 100 ticks per second); NaN where unknown. */
function processCpuMs(pid: number | undefined): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return Number.NaN;
  }
}

type OperationCpu = Record<string, { requests: number; cpuSeconds: number }>;

/**
 * The local endpoint's CPU milliseconds so far and its requests and CPU seconds per operation
 * (`cpuByOperation`), as the bundled endpoint reports them in one answer; NaN and none from any
 * other endpoint.
 */
async function endpointStatus(endpointUrl: string): Promise<{ cpuMs: number; operations: OperationCpu }> {
  try {
    const r = await fetch(`${endpointUrl.replace(/\/*$/, '')}/_sledge/endpoint`);
    const { cpuSeconds, cpuByOperation } = (await r.json()) as { cpuSeconds?: unknown; cpuByOperation?: OperationCpu };
    return { cpuMs: typeof cpuSeconds === 'number' ? cpuSeconds * 1000 : Number.NaN, operations: cpuByOperation ?? {} };
  } catch {
    return { cpuMs: Number.NaN, operations: {} };
  }
}

/** Per operation between two readings: requests and CPU ms per 4 MiB of `mib`, costliest first. */
function operationsPer4MiB(a: OperationCpu, b: OperationCpu, mib: number): Array<{ operation: string; requests: number; cpuMs: number }> {
  const n = mib / 4;
  return Object.entries(b)
    .map(([operation, x]) => ({
      operation,
      requests: (x.requests - (a[operation]?.requests ?? 0)) / n,
      cpuMs: ((x.cpuSeconds - (a[operation]?.cpuSeconds ?? 0)) * 1000) / n,
    }))
    .filter((o) => o.requests > 0)
    .sort((x, y) => y.cpuMs - x.cpuMs);
}

/**
 * CPU milliseconds of the processes of one side: this process (for Sledge the head, with the
 * local API stand-in; idle during s3backer's jobs), the device (the gateway, or s3backer), and
 * the local endpoint both sides share.
 */
interface CpuSample {
  bench: number;
  device: number;
  endpoint: number;
  /** The endpoint's own accounting per operation, read with `endpoint`. */
  operations?: OperationCpu;
}

async function cpuSample(devicePid: number | undefined, endpointUrl: string): Promise<CpuSample> {
  const u = process.cpuUsage();
  const { cpuMs, operations } = await endpointStatus(endpointUrl);
  return { bench: (u.user + u.system) / 1000, device: processCpuMs(devicePid), endpoint: cpuMs, operations };
}

const NO_CPU: CpuSample = { bench: Number.NaN, device: Number.NaN, endpoint: Number.NaN };

/** CPU per 4 MiB of `mib` moved between two samples. */
function cpuPer4MiB(a: CpuSample, b: CpuSample, mib: number): CpuSample {
  const n = mib / 4;
  return { bench: (b.bench - a.bench) / n, device: (b.device - a.device) / n, endpoint: (b.endpoint - a.endpoint) / n };
}

/** The read cache's hits and misses from the last line a gateway printed on SIGUSR2. */
function gatewayHits(gw: NbdTarget): string {
  const lines = [...gw.output().matchAll(/read cache (\d+) hits, (\d+) misses/g)];
  const last = lines[lines.length - 1];
  return last ? `${last[1]} hits, ${last[2]} misses` : 'not reported';
}

/** The chunk GETs a running gateway sent itself (direct reads), from the line it prints on SIGUSR2. */
async function gatewayChunkGets(gw: NbdTarget): Promise<number> {
  const pattern = /so far: .*? (\d+) chunk GETs/g;
  const before = [...gw.output().matchAll(pattern)].length;
  process.kill(gw.pid!, 'SIGUSR2');
  for (let waitedMs = 0; waitedMs < 10_000; waitedMs += 50) {
    const lines = [...gw.output().matchAll(pattern)];
    if (lines.length > before) return Number(lines[lines.length - 1]![1]);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`the gateway did not report its GETs on SIGUSR2:\n${gw.output()}`);
}

/**
 * The gateway against s3backer (Debian's `s3backer`, FUSE, 1 MiB blocks, its block cache set to
 * the gateway's read cache size) on the same local endpoint, in the same run, on the same 512
 * MiB of random data: each through the interface its users use, the gateway over NBD (fio's nbd
 * engine) and s3backer as the file it mounts (fio's libaio engine with O_DIRECT, s3backer's
 * --directIO, so neither side is helped by the kernel's page cache).
 */
async function compareWithS3backer(ctx: NbdBenchContext, dir: string, targets: NbdTarget[]): Promise<void> {
  ctx.section(`NBD gateway against s3backer on the same local endpoint, one run: ${COMPARE_MIB} MiB of random data`);
  const which = await run('s3backer', ['--version']).catch(() => null);
  if (!which || which.code !== 0) {
    console.log('s3backer is not installed (apt-get install s3backer); skipped');
    return;
  }
  const cacheMiB = COMPARE_MIB * 2;
  // Sledge: a gateway per phase, so the cold read starts with an empty cache.
  const vol = await ctx.createVolume(ctx.apiUrl, COMPARE_MIB * MiB);
  const sock = join(dir, 'cmp.sock');
  let gw = await startGateway(ctx.apiUrl, vol, ['--socket', sock], ['--read-cache-mib', String(cacheMiB)]);
  targets.push(gw);
  const sledge: Side = {
    fio: (name, args) => fio(gw.uri, `sledge ${name}`, args, dir),
    async restart() {
      await gw.stop();
      gw = await startGateway(ctx.apiUrl, vol, ['--socket', sock], ['--read-cache-mib', String(cacheMiB)]);
      targets.push(gw);
    },
    // The head's GETs (in this process) and the gateway's own chunk GETs (direct reads).
    gets: async () => (ctx.requestCounts().requests['S3:GetObject'] ?? 0) + (await gatewayChunkGets(gw)),
    pid: () => gw.pid,
    stop: async () => void (await gw.stop()),
  };
  // s3backer: a bucket of its own on the same endpoint, credentials as the endpoint takes them.
  const bucket = `s3backer-bench-${Date.now().toString(36)}`;
  await ctx.createBucket(bucket);
  const mnt = join(dir, 's3backer');
  mkdirSync(mnt);
  // In the foreground (-f), so that the bench knows when it has exited: after an unmount it
  // writes back its dirty blocks and clears its mounted flag, and only then can it mount again.
  let daemon: ChildProcess | undefined;
  let daemonOut = '';
  const mount = async () => {
    daemonOut = '';
    daemon = spawn(
      's3backer',
      [
        '--accessId=test',
        '--accessKey=test',
        `--baseURL=${ctx.endpointUrl.replace(/\/*$/, '/')}`,
        '--blockSize=1M',
        `--size=${COMPARE_MIB}M`,
        `--blockCacheSize=${cacheMiB}`,
        '--directIO',
        '-f',
        bucket,
        mnt,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    daemon.stdout!.on('data', (d) => (daemonOut += d));
    daemon.stderr!.on('data', (d) => (daemonOut += d));
    for (let i = 0; i < 200 && !existsSync(join(mnt, 'file')); i++) {
      if (daemon.exitCode !== null) throw new Error(`s3backer exited ${daemon.exitCode}: ${daemonOut}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    if (!existsSync(join(mnt, 'file'))) throw new Error(`s3backer did not mount within 10 s: ${daemonOut}`);
  };
  /** Unmounts and waits for s3backer to exit (its dirty blocks written back); returns the milliseconds that took. */
  const umount = async (): Promise<number> => {
    const started = Date.now();
    const d = daemon;
    if (!d) return 0;
    const exited = d.exitCode !== null ? Promise.resolve() : new Promise<void>((resolve) => d.once('exit', () => resolve()));
    await run('umount', [mnt]);
    await exited;
    daemon = undefined;
    return Date.now() - started;
  };
  await mount();
  const file = join(mnt, 'file');
  let lastUmountMs = 0;
  const s3b: Side = {
    async fio(name, args) {
      return fio('', `s3backer ${name}`, args, dir, ['--ioengine=libaio', '--direct=1', `--filename=${file}`]);
    },
    async restart() {
      lastUmountMs = await umount();
      await mount();
    },
    async gets() {
      const stats = readFileSync(join(mnt, 'stats'), 'utf8');
      return Number(/http_gets\s+(\d+)/.exec(stats)?.[1] ?? NaN);
    },
    pid: () => daemon?.pid,
    stop: async () => void (await umount()),
  };
  try {
    const results: Record<string, { sledge: number; s3backer: number }> = {};
    const getsPerMiB = { sledge: 0, s3backer: 0 };
    const warmGets = { sledge: 0, s3backer: 0 };
    let warmHits = '';
    /** The AWS requests the head (this process) made during Sledge's cold read: its read plans. */
    let coldHeadRequests: Record<string, number> = {};
    /** The endpoint's own accounting of each side's cold read, per operation (the bundled endpoint only). */
    const coldOperations: Record<string, ReturnType<typeof operationsPer4MiB>> = {};
    // CPU per 4 MiB of each side's processes (cpuSample) during its sequential write, cold read
    // and warm re-read; and Sledge's write once more with direct writes, on a volume of its own.
    const cpu: Record<string, Record<'sledge' | 's3backer', CpuSample>> = {};
    {
      const directVol = await ctx.createVolume(ctx.apiUrl, COMPARE_MIB * MiB);
      const directGw = await startGateway(ctx.apiUrl, directVol, ['--socket', join(dir, 'cmp-direct.sock')], ['--read-cache-mib', String(cacheMiB), '--direct-writes']);
      targets.push(directGw);
      const c0 = await cpuSample(directGw.pid, ctx.endpointUrl);
      const w = await fio(directGw.uri, 'sledge direct sequential write', ['--rw=write', ...SEQ, '--end_fsync=1'], dir);
      cpu['sequential write, --direct-writes'] = { sledge: cpuPer4MiB(c0, await cpuSample(directGw.pid, ctx.endpointUrl), COMPARE_MIB), s3backer: NO_CPU };
      await directGw.stop();
      results['sequential write until durable, --direct-writes (MB/s)'] = { sledge: (COMPARE_MIB * MiB) / (w.job_runtime / 1000) / 1e6, s3backer: 0 };
    }
    const measured = (job: string, name: 'sledge' | 's3backer', a: CpuSample, b: CpuSample) => {
      cpu[job] ??= { sledge: NO_CPU, s3backer: NO_CPU };
      cpu[job]![name] = cpuPer4MiB(a, b, COMPARE_MIB);
    };
    for (const [name, side] of [
      ['sledge', sledge],
      ['s3backer', s3b],
    ] as const) {
      const w0 = await cpuSample(side.pid(), ctx.endpointUrl);
      const w = await side.fio('sequential write', ['--rw=write', ...SEQ, '--end_fsync=1']);
      // The background work the write left (the worker folding its tail into page items) is done
      // before the read, and counted as the write's: otherwise it ran during the cold read, on
      // the same two cores, and was counted as the read's. Not timed: the write is durable at its FLUSH.
      if (name === 'sledge') await ctx.settle(vol);
      // s3backer's own CPU is counted until its unmount (the process then exits); the endpoint's
      // through the unmount, which writes back what s3backer still held.
      const w1 = await cpuSample(side.pid(), ctx.endpointUrl);
      lastUmountMs = 0;
      await side.restart();
      measured('sequential write', name, w0, { ...w1, endpoint: (await endpointStatus(ctx.endpointUrl)).cpuMs });
      // s3backer's fsync does not wait for its block cache; its unmount does. Durable is fio's
      // time plus the unmount's (0 for the gateway, whose FLUSH is durable).
      const durableMBps = (COMPARE_MIB * MiB) / (w.job_runtime / 1000 + lastUmountMs / 1000) / 1e6;
      if (name === 'sledge') ctx.resetRequestCounts();
      const g0 = await side.gets();
      const r0 = await cpuSample(side.pid(), ctx.endpointUrl);
      const cold = await side.fio('cold sequential read', ['--rw=read', ...SEQ]);
      const r1 = await cpuSample(side.pid(), ctx.endpointUrl);
      measured('cold sequential read', name, r0, r1);
      coldOperations[name] = operationsPer4MiB(r0.operations ?? {}, r1.operations ?? {}, COMPARE_MIB);
      const g1 = await side.gets();
      getsPerMiB[name] = (g1 - g0) / COMPARE_MIB;
      if (name === 'sledge') coldHeadRequests = ctx.requestCounts().requests;
      const m0 = await cpuSample(side.pid(), ctx.endpointUrl);
      const warm = await side.fio('warm sequential re-read', ['--rw=read', ...SEQ]);
      measured('warm sequential re-read', name, m0, await cpuSample(side.pid(), ctx.endpointUrl));
      warmGets[name] = (await side.gets()) - g1;
      // side.gets() had the gateway print its counters (SIGUSR2): the hits of cold and warm reads, before the random reads.
      if (name === 'sledge') warmHits = gatewayHits(gw);
      const rand = await side.fio('4 KiB random read', RAND);
      const put = (k: string, v: number) => {
        results[k] ??= { sledge: 0, s3backer: 0 };
        results[k]![name] = v;
      };
      put('sequential write 1 MiB, qd 8, then FLUSH (MB/s)', w.write.bw_bytes / 1e6);
      put('sequential write until durable (MB/s)', durableMBps);
      if (name === 's3backer') results['sequential write until durable, --direct-writes (MB/s)']!.s3backer = durableMBps;
      put('cold sequential read 1 MiB, qd 8 (MB/s)', cold.read.bw_bytes / 1e6);
      put('warm sequential re-read 1 MiB, qd 8 (MB/s)', warm.read.bw_bytes / 1e6);
      put('4 KiB random read, qd 32, warm (IOPS)', rand.read.iops);
      await side.stop();
    }
    const goals: Record<string, string> = {
      'sequential write until durable (MB/s)': '>= 0.6',
      'cold sequential read 1 MiB, qd 8 (MB/s)': '>= 1.0',
      'warm sequential re-read 1 MiB, qd 8 (MB/s)': '>= 2.0',
    };
    ctx.table(
      Object.entries(results).map(([job, r]) => ({
        job,
        sledge: r.sledge.toFixed(1),
        s3backer: r.s3backer.toFixed(1),
        'sledge / s3backer': (r.sledge / r.s3backer).toFixed(2),
        goal: goals[job] ?? '',
      })),
    );
    const ms = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a');
    ctx.table(
      Object.entries(cpu).map(([job, c]) => ({
        'CPU ms per 4 MiB': job,
        'sledge: gateway': ms(c.sledge.device),
        'head + local API (bench process)': ms(c.sledge.bench),
        endpoint: ms(c.sledge.endpoint),
        'sledge total': ms(c.sledge.device + c.sledge.bench + c.sledge.endpoint),
        's3backer: s3backer': ms(c.s3backer.device),
        'endpoint ': ms(c.s3backer.endpoint),
        's3backer total': ms(c.s3backer.device + c.s3backer.endpoint),
      })),
    );
    console.log(`(fio's own CPU is in neither; load average at the end: ${loadavg().map((x) => x.toFixed(1)).join(', ')}.)`);
    ctx.table([{ 'S3 GETs per MiB read cold': 'sledge', value: getsPerMiB.sledge.toFixed(2) }, { 'S3 GETs per MiB read cold': 's3backer', value: getsPerMiB.s3backer.toFixed(2) }]);
    console.log(
      `The gateway's read cache after the cold read and the re-read: ${warmHits}; S3 GETs during the warm re-read: sledge ${warmGets.sledge}, s3backer ${warmGets.s3backer}.`,
    );
    const per4MiB = (n: number) => ((n * 4) / COMPARE_MIB).toFixed(2);
    console.log(
      `The head's AWS requests per 4 MiB of Sledge's cold read (its read plans; the gateway's chunk GETs are counted above): ${
        Object.entries(coldHeadRequests)
          .sort((a, b) => b[1] - a[1])
          .map(([op, n]) => `${op} ${per4MiB(n)}`)
          .join(', ') || 'none'
      }.`,
    );
    if (coldOperations.sledge?.length || coldOperations.s3backer?.length) {
      ctx.table(
        (['sledge', 's3backer'] as const).flatMap((side) =>
          (coldOperations[side] ?? []).map((o) => ({
            'cold read, per 4 MiB': side,
            'endpoint operation': o.operation,
            requests: o.requests.toFixed(2),
            'endpoint CPU ms (its thread)': o.cpuMs.toFixed(1),
            'ms per request': (o.cpuMs / o.requests).toFixed(2),
          })),
        ),
      );
      console.log(
        "(each request's own thread CPU in the endpoint, from parsing it to writing its answer, as the endpoint accounts it (local/moto-server.py); waits for locks are not in it, so the sum is below the endpoint's process CPU above)",
      );
    }
    console.log(
      `(s3backer ${(await run('s3backer', ['--version'])).stdout.split('\n')[0]}: --blockSize=1M --blockCacheSize=${cacheMiB} --directIO, fio libaio O_DIRECT on its file, ` +
        'its write "until durable" includes the unmount that writes its cache back; ' +
        `the gateway with --read-cache-mib ${cacheMiB}, fio's nbd engine. Sledge writes 1.5x the bytes (4+2 erasure coding).)`,
    );
  } finally {
    if (daemon) await umount();
  }
}

export async function benchNbd(ctx: NbdBenchContext): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sledge-bench-nbd-'));
  const targets: NbdTarget[] = [];
  try {
    if (ctx.compare) await compareWithS3backer(ctx, dir, targets);

    ctx.section('NBD gateway: AWS requests and cost (exact counts, scaled from the runs described)');
    const costRows: Array<Record<string, string | number>> = [];
    // Both commit protocols in one run (docs/page-map.md, "Folding"): volumes fold by default; one made with foldTailMax 0 does not.
    for (const [protocol, create] of [
      ['folding', {}],
      ['not folding', { foldTailMax: 0 }],
    ] as const) {
      // Write-back only on FLUSH, full segments and shutdown, so the flush pattern alone decides.
      const costVolume = await ctx.createVolume(ctx.apiUrl, GiB, create);
      const cost = await startGateway(ctx.apiUrl, costVolume, ['--socket', join(dir, `cost-${protocol.replace(' ', '-')}.sock`)], ['--max-dirty-age-ms', '0']);
      targets.push(cost);
      const measure = async (label: string, args: string[], scale: (j: FioJob) => number, timeoutMs?: number) => {
        // SLEDGE_BENCH_NBD_COST_ONLY=<text>: only the rows whose label (with its protocol) holds it.
        const only = process.env.SLEDGE_BENCH_NBD_COST_ONLY;
        if (only && !`${label} [${protocol}]`.includes(only)) return;
        await ctx.settle(costVolume);
        ctx.resetRequestCounts();
        const j = await fio(cost.uri, label, args, dir, undefined, timeoutMs);
        await ctx.settle(costVolume);
        const counts = ctx.requestCounts();
        // Every segment is k+m = 6 chunk PUTs: the write units per segment include the folds the run made.
        const puts = counts.requests['S3:PutObject'] ?? 0;
        const perSegment =
          puts > 0
            ? `, ${((counts.dynamoWriteUnits * 6) / puts).toFixed(1)} DDB WCU per segment (${Object.entries(counts.dynamoWriteUnitsBy)
                .sort((a, b) => b[1] - a[1])
                .map(([op, units]) => `${op.replace(/\S*?([A-Z][a-z]+)Table[0-9A-F]+-\S+/, '$1')} ${((units * 6) / puts).toFixed(1)}`)
                .join(', ')})`
            : '';
        const row = { ...ctx.costRow(`${label} [${protocol}]`, counts, scale(j)), measured: `${j.write.total_ios} writes, ${puts} S3 PUTs${perSegment}` };
        costRows.push(row);
        console.log(JSON.stringify({ msg: 'nbd cost row', ...row })); // each row as measured, should a later one fail

      };
      await measure('per GiB, sequential 1 MiB writes, FLUSH at end', ['--rw=write', '--bs=1M', '--size=64M', '--iodepth=8', '--end_fsync=1'], (j) => GiB / j.write.io_bytes);
      const perMillion = (j: FioJob) => 1e6 / j.write.total_ios;
      await measure('per 1M 4 KiB random writes (64 MiB span), FLUSH every 4 MiB', ['--rw=randwrite', '--bs=4k', '--size=64M', '--offset=256M', '--number_ios=8192', '--iodepth=1', '--fsync=1024'], perMillion);
      await measure('per 1M 4 KiB random writes (64 MiB span), FLUSH every 64 KiB', ['--rw=randwrite', '--bs=4k', '--size=64M', '--offset=256M', '--number_ios=1024', '--iodepth=1', '--fsync=16'], perMillion);
      await measure('per 1M 4 KiB random writes (64 MiB span), FLUSH after every write', ['--rw=randwrite', '--bs=4k', '--size=64M', '--offset=256M', '--number_ios=64', '--iodepth=1', '--fsync=1'], perMillion);
      await measure('per 1M 4 KiB random writes (whole 1 GiB), FLUSH every 4 MiB', ['--rw=randwrite', '--bs=4k', '--size=1G', '--number_ios=8192', '--iodepth=1', '--fsync=1024'], perMillion);
      // Four times longer: on a folding volume the row then carries the folds the tail bound
      // triggers in a long run, not one fold of eight commits at its end.
      await measure('per 1M 4 KiB random writes (whole 1 GiB), FLUSH every 4 MiB, 32768 writes', ['--rw=randwrite', '--bs=4k', '--size=1G', '--number_ios=32768', '--iodepth=1', '--fsync=1024'], perMillion);
      await measure('per 1M 4 KiB random writes (whole 1 GiB), FLUSH every 64 KiB', ['--rw=randwrite', '--bs=4k', '--size=1G', '--number_ios=1024', '--iodepth=1', '--fsync=16'], perMillion);
      if (protocol === 'folding') {
        // The steady state: every 4 KiB block of 1 GiB written four times in random order (fio's
        // random map makes each pass write each block once), 1,024 commits of 4 MiB. The worker
        // folds every half tail as it would for a VM's disk, so the row carries several folds and
        // the first one's page creations, and the closing fold is one of them, not the whole cost.
        await measure('per 1M 4 KiB random writes (whole 1 GiB), FLUSH every 4 MiB, 1048576 writes (each block 4 times)', ['--rw=randwrite', '--bs=4k', '--size=1G', '--loops=4', '--iodepth=1', '--fsync=1024'], perMillion, 1_800_000);
      }
      await cost.stop();
      targets.pop();
    }
    ctx.table(costRows);
    console.log(
      'A FLUSH writes back what is dirty as one segment (k+m = 6 chunk PUTs) per batch; a batch holds at most 4 MiB of data and 96 pages (1 MiB each),\n' +
        'so writes scattered over more than 96 MiB need several batches per FLUSH. Without FLUSH the gateway writes back full 4 MiB segments.',
    );
  } finally {
    for (const t of targets) await t.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
