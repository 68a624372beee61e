/**
 * Backups and restores from the command line (docs/backup.md), wired by cli/main.ts:
 *
 *   sledge backup <volumeId> --snapshot <snapshotId> --api URL   POST /volumes/{id}/backups, then GET /backups/{id}
 *   sledge restore <backupId> --api URL [--size SIZE]            POST /restores, then GET /restores/{id}
 *
 * Each draws a progress bar (redrawn in place on a terminal, one line per change otherwise)
 * until the job is complete (exit 0) or failed (one line on stderr naming the reason, exit 1).
 * `parseBackupArgs` and `parseRestoreArgs` only parse; `renderJobProgress` is pure.
 */
import { apiFetch, expectStatus, formatBytes, formatDuration, type Fetch, type Out } from './drives.ts';
import { CliError, UsageError } from './errors.ts';
import { checkApi, checkId, onePositional, parse, parseSize, send } from './snapshots.ts';

export interface BackupCommand {
  apiUrl: string;
  volumeId: string;
  snapshotId: string;
}

export interface RestoreCommand {
  apiUrl: string;
  backupId: string;
  sizeBytes?: number;
}

/** Parses the words after `sledge backup`. Throws UsageError. */
export function parseBackupArgs(args: string[]): BackupCommand {
  const usage = 'sledge backup';
  const { values, positionals } = parse(args, ['snapshot']);
  const volumeId = checkId(onePositional(positionals, usage, 'volume id'), 'volume', usage);
  if (values.snapshot === undefined) throw new UsageError(`--snapshot <snapshotId> is required for ${usage}: the snapshot of ${volumeId} to back up`);
  return { apiUrl: checkApi(values.api, usage), volumeId, snapshotId: checkId(values.snapshot, 'snapshot', '--snapshot') };
}

/** Parses the words after `sledge restore`. Throws UsageError. */
export function parseRestoreArgs(args: string[]): RestoreCommand {
  const usage = 'sledge restore';
  const { values, positionals } = parse(args, ['size']);
  const backupId = onePositional(positionals, usage, 'backup id');
  if (!/^bkp-[0-9a-f]{16}-[0-9a-f]{12}-[0-9a-f]{6}$/.test(backupId)) {
    throw new UsageError(`${JSON.stringify(backupId)} is not a backup id (like bkp-0123456789abcdef-0190f0e1a2b3-a1b2c3; \`GET /backups\` lists them)`);
  }
  const apiUrl = checkApi(values.api, usage);
  return { apiUrl, backupId, ...(values.size !== undefined ? { sizeBytes: parseSize(values.size, '--size') } : {}) };
}

/** What `GET /backups/{id}` and `GET /restores/{id}` show of progress. */
export interface JobProgressJson {
  state: string;
  fractionDone: number;
  done: number;
  total: number;
  rateBytesPerSecond?: number;
  etaSeconds?: number;
}

/**
 * One line: a bar, the percentage, bytes done of bytes, the rate and the ETA (the worker's).
 *
 * @example
 * renderJobProgress({ state: 'running', fractionDone: 0.4, done: 40 << 20, total: 100 << 20, rateBytesPerSecond: 8 << 20, etaSeconds: 8 }, 'shipped', 20);
 * // "[########------------]  40% 40.0 MiB of 100.0 MiB shipped  8.0 MiB/s  ETA 8s"
 */
export function renderJobProgress(p: JobProgressJson, verb: string, barWidth = 30): string {
  const fraction = Math.max(0, Math.min(1, p.fractionDone));
  const filled = Math.round(fraction * barWidth);
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}]`;
  const pct = `${String(Math.floor(fraction * 100)).padStart(3)}%`;
  const rate = p.rateBytesPerSecond !== undefined ? `${formatBytes(p.rateBytesPerSecond)}/s` : '--/s';
  const eta = p.state === 'complete' ? 'ETA 0s' : `ETA ${formatDuration(p.etaSeconds ?? null)}`;
  return `${bar} ${pct} ${formatBytes(p.done)} of ${formatBytes(p.total)} ${verb}  ${rate}  ${eta}`;
}

export interface WatchOptions {
  intervalMs?: number;
  timeoutMs?: number;
  fetch?: Fetch;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `path` and draws its progress until it is complete (0), failed (CliError) or the timeout passes (1). */
export async function watch(
  get: Fetch,
  apiUrl: string,
  path: string,
  label: string,
  verb: string,
  progress: (j: Record<string, unknown>) => JobProgressJson,
  out: Out,
  opts: WatchOptions,
): Promise<Record<string, unknown> | null> {
  const deadline = Date.now() + (opts.timeoutMs ?? 24 * 3600_000);
  let last = '';
  while (Date.now() <= deadline) {
    const res = await get(`${apiUrl}${path}`);
    await expectStatus(res, 200, `GET ${path}`);
    const j = (await res.json()) as Record<string, unknown> | null;
    if (j === null || typeof j !== 'object') throw new CliError(`GET ${path} answered something other than a job; is --api the URL of the Sledge API?`);
    if (j.state === 'failed') {
      if (out.isTTY && last) out.write('\n');
      throw new CliError(`${label} failed: ${String(j.error ?? 'no reason given')}`);
    }
    const line = `${label}: ${renderJobProgress(progress(j), verb, Math.max(10, Math.min(40, (out.columns ?? 120) - 80)))}`;
    if (j.state === 'complete') {
      out.write(out.isTTY ? `\r\x1b[2K${line}\n` : `${line}\n`);
      return j;
    }
    if (out.isTTY) out.write(`\r\x1b[2K${line}`);
    else if (line !== last) out.write(`${line}\n`);
    last = line;
    await sleep(opts.intervalMs ?? 500);
  }
  if (out.isTTY) out.write('\n');
  out.write(`${label}: still running after the timeout; the worker goes on (GET ${path} shows its progress)\n`);
  return null;
}

/** Starts the backup and draws its progress until it is complete. */
export async function runBackup(cmd: BackupCommand, out: Out, opts: WatchOptions = {}): Promise<number> {
  const get = opts.fetch ?? apiFetch(cmd.apiUrl);
  const started = (await send(get, cmd.apiUrl, 'POST', `/volumes/${encodeURIComponent(cmd.volumeId)}/backups`, 202, { snapshotId: cmd.snapshotId })) as {
    backupId: string;
    base?: string;
  };
  out.write(`${started.backupId}: backing up ${cmd.snapshotId}, ${started.base ? `the blocks changed since backup ${started.base}` : 'in full'}\n`);
  const t0 = Date.now();
  const j = await watch(
    get,
    cmd.apiUrl,
    `/backups/${started.backupId}`,
    started.backupId,
    'shipped',
    (b) => ({ ...(b as unknown as JobProgressJson), done: Number(b.bytesShipped ?? 0), total: Number(b.bytesToShip ?? 0) }),
    out,
    opts,
  );
  if (!j) return 1;
  out.write(`${started.backupId} complete in ${formatDuration((Date.now() - t0) / 1000)}: ${formatBytes(Number(j.bytesToShip))} of changed blocks in ${j.packs} packs\n`);
  return 0;
}

/** Starts the restore and draws its progress until it is complete. */
export async function runRestore(cmd: RestoreCommand, out: Out, opts: WatchOptions = {}): Promise<number> {
  const get = opts.fetch ?? apiFetch(cmd.apiUrl);
  const body = cmd.sizeBytes === undefined ? { backupId: cmd.backupId } : { backupId: cmd.backupId, sizeBytes: cmd.sizeBytes };
  const started = (await send(get, cmd.apiUrl, 'POST', '/restores', 202, body)) as { restoreId: string; volumeId: string };
  out.write(`${started.restoreId}: restoring ${cmd.backupId} into ${started.volumeId}\n`);
  const j = await watch(
    get,
    cmd.apiUrl,
    `/restores/${started.restoreId}`,
    started.restoreId,
    'restored',
    (r) => ({ ...(r as unknown as JobProgressJson), done: Number(r.bytesRestored ?? 0), total: Number(r.bytesToRestore ?? 0) }),
    out,
    opts,
  );
  if (!j) return 1;
  out.write(`${started.volumeId} restored from ${cmd.backupId}${j.snapshotId ? ` (snapshot ${String(j.snapshotId)})` : ''}\n`);
  return 0;
}
