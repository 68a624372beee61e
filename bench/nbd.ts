/**
 * The NBD gateway section of `npm run bench`.
 *
 * Speed: the same fio jobs (fio's nbd engine, libnbd) against the gateway and against
 * `nbdkit memory`, the upper bound of the transport on this machine, in one run, as ratios.
 * Writes end with a FLUSH (`end_fsync=1`), so the gateway's figures are for durable writes,
 * not for filling its cache.
 *
 * Cost: the gateway runs as a child process (the real CLI) and talks HTTP to the API that
 * bench/main.ts runs in-process, so every AWS request it causes is counted exactly there.
 * Small runs are measured and scaled linearly; the table says what was measured.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RequestCounts } from '#shared/aws/clients.ts';
import { run, startGateway, startNbdkitMemory, type NbdTarget } from '../test/integration/nbd-tools.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** fio's random seed, fixed so runs are comparable. */
const FIO_SEED = 20240601;

export interface NbdBenchContext {
  apiUrl: string;
  createVolume(api: string, sizeBytes: number): Promise<string>;
  resetRequestCounts(): void;
  requestCounts(): RequestCounts;
  /** Formats request counts scaled by `scale` as a table row labelled `label`. */
  costRow(label: string, counts: RequestCounts, scale: number): Record<string, string | number>;
  table(rows: Array<Record<string, string | number>>): void;
  section(title: string): void;
}

interface FioJob {
  read: { bw_bytes: number; iops: number; io_bytes: number; total_ios: number };
  write: { bw_bytes: number; iops: number; io_bytes: number; total_ios: number };
  sync?: { total_ios: number };
  job_runtime: number;
}

async function fio(uri: string, name: string, args: string[], outDir: string): Promise<FioJob> {
  const out = join(outDir, `${name.replace(/\W+/g, '-')}.json`);
  const r = await run('fio', [`--name=${name.replace(/\W+/g, '-')}`, '--ioengine=nbd', `--uri=${uri}`, `--randseed=${FIO_SEED}`, '--output-format=json', `--output=${out}`, ...args], {
    timeoutMs: 300_000,
  });
  if (r.code !== 0) throw new Error(`fio ${name} on ${uri} exited ${r.code}: ${r.stderr.slice(-2000)}`);
  return JSON.parse(readFileSync(out, 'utf8')).jobs[0] as FioJob;
}

export async function benchNbd(ctx: NbdBenchContext): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sledge-bench-nbd-'));
  const targets: NbdTarget[] = [];
  try {
    ctx.section('NBD gateway against nbdkit memory: the same fio jobs (nbd engine), one run');
    const vol = await ctx.createVolume(ctx.apiUrl, GiB);
    const gateway = await startGateway(ctx.apiUrl, vol, ['--socket', join(dir, 'gw.sock')]);
    targets.push(gateway);
    const memory = await startNbdkitMemory(join(dir, 'mem.sock'), GiB);
    targets.push(memory);
    const jobs: Array<{ label: string; args: string[]; metric: (j: FioJob) => number; unit: string }> = [
      { label: 'sequential write 1 MiB, qd 8, then FLUSH', args: ['--rw=write', '--bs=1M', '--size=64M', '--iodepth=8', '--end_fsync=1'], metric: (j) => j.write.bw_bytes / 1e6, unit: 'MB/s' },
      { label: 'sequential read 1 MiB, qd 8', args: ['--rw=read', '--bs=1M', '--size=64M', '--iodepth=8'], metric: (j) => j.read.bw_bytes / 1e6, unit: 'MB/s' },
      {
        label: 'random write 4 KiB over 64 MiB, qd 32, 8192 writes, then FLUSH',
        args: ['--rw=randwrite', '--bs=4k', '--size=64M', '--offset=128M', '--number_ios=8192', '--iodepth=32', '--end_fsync=1'],
        metric: (j) => j.write.iops,
        unit: 'IOPS',
      },
    ];
    const rows: Array<Record<string, string | number>> = [];
    for (const job of jobs) {
      const g = job.metric(await fio(gateway.uri, `gw ${job.label}`, job.args, dir));
      const m = job.metric(await fio(memory.uri, `mem ${job.label}`, job.args, dir));
      rows.push({ job: job.label, unit: job.unit, 'sledge gateway': g.toFixed(1), 'nbdkit memory': m.toFixed(1), 'gateway / memory': (g / m).toFixed(3) });
    }
    ctx.table(rows);
    console.log('(fio figures over each job\'s runtime, the final FLUSH included; the gateway writes back one 4 MiB segment at a time through the API)');
    await memory.stop();

    ctx.section('NBD gateway: AWS requests and cost (exact counts, scaled from the runs described)');
    const costRows: Array<Record<string, string | number>> = [];
    // Write-back only on FLUSH, full segments and shutdown, so the flush pattern alone decides.
    const cost = await startGateway(ctx.apiUrl, await ctx.createVolume(ctx.apiUrl, GiB), ['--socket', join(dir, 'cost.sock')], ['--max-dirty-age-ms', '0']);
    targets.push(cost);
    const measure = async (label: string, args: string[], scale: (j: FioJob) => number) => {
      ctx.resetRequestCounts();
      const j = await fio(cost.uri, label, args, dir);
      const counts = ctx.requestCounts();
      costRows.push({ ...ctx.costRow(label, counts, scale(j)), measured: `${j.write.total_ios} writes, ${counts.requests['S3:PutObject'] ?? 0} S3 PUTs` });
    };
    await measure('per GiB, sequential 1 MiB writes, FLUSH at end', ['--rw=write', '--bs=1M', '--size=64M', '--iodepth=8', '--end_fsync=1'], (j) => GiB / j.write.io_bytes);
    const perMillion = (j: FioJob) => 1e6 / j.write.total_ios;
    await measure('per 1M 4 KiB random writes (64 MiB span), FLUSH every 4 MiB', ['--rw=randwrite', '--bs=4k', '--size=64M', '--offset=256M', '--number_ios=8192', '--iodepth=1', '--fsync=1024'], perMillion);
    await measure('per 1M 4 KiB random writes (64 MiB span), FLUSH every 64 KiB', ['--rw=randwrite', '--bs=4k', '--size=64M', '--offset=256M', '--number_ios=1024', '--iodepth=1', '--fsync=16'], perMillion);
    await measure('per 1M 4 KiB random writes (64 MiB span), FLUSH after every write', ['--rw=randwrite', '--bs=4k', '--size=64M', '--offset=256M', '--number_ios=64', '--iodepth=1', '--fsync=1'], perMillion);
    await measure('per 1M 4 KiB random writes (whole 1 GiB), FLUSH every 4 MiB', ['--rw=randwrite', '--bs=4k', '--size=1G', '--number_ios=8192', '--iodepth=1', '--fsync=1024'], perMillion);
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
