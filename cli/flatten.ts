/**
 * Rolling a volume back to a snapshot and flattening a clone, wired by cli/main.ts
 * (docs/snapshots.md, "Rollback" and "Flatten"):
 *
 *   sledge rollback <volumeId> --snapshot <snapshotId> --api URL [--key KEY]   POST /volumes/{id}/rollback
 *   sledge flatten <volumeId> --api URL                                        POST /volumes/{id}/flatten, then GET /volumes/{id}
 *
 * `parseRollbackArgs` and `parseFlattenArgs` only parse (UsageError for a wrong command line);
 * `runRollback` and `runFlatten` talk HTTP to the API. `sledge flatten` draws a progress bar
 * (redrawn in place on a terminal, one line per change otherwise) until the volume has no
 * parent, like `sledge retire --watch`. `renderFlattenProgress` is pure.
 */
import { apiFetch, expectStatus, formatBytes, formatDuration, type Fetch, type Out } from './drives.ts';
import { ApiError, CliError, UsageError } from './errors.ts';
import { checkApi, checkId, onePositional, parse, send } from './snapshots.ts';
import type { SigningOptions } from './signing.ts';

export interface RollbackCommand {
  apiUrl: string;
  volumeId: string;
  snapshotId: string;
  key?: string;
  /** `--profile`, `--region`, `--unsigned`. */
  signing?: SigningOptions;
}

export interface FlattenCommand {
  apiUrl: string;
  volumeId: string;
  signing?: SigningOptions;
}

function checkKey(key: string): string {
  if (!/^[A-Za-z0-9._:-]{1,64}$/.test(key)) throw new UsageError(`--key must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, got ${JSON.stringify(key)}`);
  return key;
}

/** Parses the words after `sledge rollback`. Throws UsageError. */
export function parseRollbackArgs(args: string[]): RollbackCommand {
  const usage = 'sledge rollback';
  const { values, positionals, signing } = parse(args, ['snapshot', 'key']);
  const volumeId = checkId(onePositional(positionals, usage, 'volume id'), 'volume', usage);
  if (values.snapshot === undefined) throw new UsageError(`--snapshot <snapshotId> is required for ${usage}: the snapshot of ${volumeId} to roll back to`);
  const snapshotId = checkId(values.snapshot, 'snapshot', '--snapshot');
  const apiUrl = checkApi(values.api, usage);
  return { apiUrl, volumeId, snapshotId, ...(values.key !== undefined ? { key: checkKey(values.key) } : {}), ...signing };
}

/** Parses the words after `sledge flatten`. Throws UsageError. */
export function parseFlattenArgs(args: string[]): FlattenCommand {
  const usage = 'sledge flatten';
  const { values, positionals, signing } = parse(args, []);
  const volumeId = checkId(onePositional(positionals, usage, 'volume id'), 'volume', usage);
  return { apiUrl: checkApi(values.api, usage), volumeId, ...signing };
}

/** What the API answers a rollback (shared/api/openapi.json). */
interface RollbackJson {
  volumeId: string;
  snapshotId: string;
  commitSeq: number;
  pagesRolledBack: number;
}

/** Rolls the volume back; one line on stdout. Returns the exit status. */
export async function runRollback(cmd: RollbackCommand, out: Out, opts: { fetch?: Fetch } = {}): Promise<number> {
  const get = opts.fetch ?? apiFetch(cmd.apiUrl, undefined, cmd.signing);
  let r: RollbackJson;
  try {
    r = (await send(get, cmd.apiUrl, 'POST', `/volumes/${encodeURIComponent(cmd.volumeId)}/rollback`, 200, { snapshotId: cmd.snapshotId }, cmd.key ? { 'x-sledge-reservation-key': cmd.key } : {})) as RollbackJson;
  } catch (err) {
    // The API names its header; on the command line the key is an option.
    if (err instanceof ApiError && err.body?.error === 'FencedError' && cmd.key === undefined) {
      throw new ApiError(`${err.message}; give the reservation holder's key with --key`, err.status, err.body);
    }
    throw err;
  }
  if (r.pagesRolledBack === 0) out.write(`${cmd.volumeId} already reads as ${cmd.snapshotId}: nothing changed since it\n`);
  else out.write(`${cmd.volumeId} rolled back to ${cmd.snapshotId}: ${r.pagesRolledBack} ${r.pagesRolledBack === 1 ? 'page' : 'pages'} restored in commit ${r.commitSeq}\n`);
  return 0;
}

/** A clone's flatten progress as `GET /volumes/{id}` shows it. */
export interface FlattenProgressJson {
  pagesDone: number;
  pages: number;
  bytesCopied: number;
  fractionDone: number;
  startedAt: string;
  updatedAt: string;
}

/**
 * One line: a bar, pages done of pages, bytes copied, the copy rate so far and the ETA (both
 * from the worker's own timestamps, so a slow poll does not change them).
 *
 * @example
 * renderFlattenProgress(p, 20); // "[########------------]  40% 400/1000 pages  150.0 MiB copied  5.0 MiB/s  ETA 45s"
 */
export function renderFlattenProgress(p: FlattenProgressJson, barWidth = 30): string {
  const fraction = Math.max(0, Math.min(1, p.fractionDone));
  const filled = Math.round(fraction * barWidth);
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}]`;
  const pct = `${String(Math.floor(fraction * 100)).padStart(3)}%`;
  const seconds = (Date.parse(p.updatedAt) - Date.parse(p.startedAt)) / 1000;
  const rate = seconds > 0 ? `${formatBytes(p.bytesCopied / seconds)}/s` : '--/s';
  const eta = p.pagesDone >= p.pages ? 'ETA 0s' : `ETA ${formatDuration(p.pagesDone > 0 && seconds > 0 ? ((p.pages - p.pagesDone) * seconds) / p.pagesDone : null)}`;
  return `${bar} ${pct} ${p.pagesDone}/${p.pages} pages  ${formatBytes(p.bytesCopied)} copied  ${rate}  ${eta}`;
}

export interface FlattenOptions {
  /** Poll interval. Default 1000 ms. */
  intervalMs?: number;
  /** Give up after this long (exit status 1; the flatten goes on). Default 24 h. */
  timeoutMs?: number;
  fetch?: Fetch;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts the flatten, then polls the volume and draws its progress until it has no parent
 * (status 0) or the timeout passes (status 1). A volume that stops being active, or goes,
 * is an error (CliError).
 */
export async function runFlatten(cmd: FlattenCommand, out: Out, opts: FlattenOptions = {}): Promise<number> {
  const get = opts.fetch ?? apiFetch(cmd.apiUrl, undefined, cmd.signing);
  const intervalMs = opts.intervalMs ?? 1000;
  const deadline = Date.now() + (opts.timeoutMs ?? 24 * 3600_000);
  const path = `/volumes/${encodeURIComponent(cmd.volumeId)}`;
  // The parent first, to name it when done (a volume that is not a clone is refused by the POST).
  const before = (await send(get, cmd.apiUrl, 'GET', path, 200)) as { parent?: { snapshotId: string } };
  const started = (await send(get, cmd.apiUrl, 'POST', `${path}/flatten`, 202)) as { pages: number };
  const t0 = Date.now();
  let parent = before.parent?.snapshotId ?? '';
  out.write(`${cmd.volumeId}: flattening ${started.pages} ${started.pages === 1 ? 'page' : 'pages'}, copying what it still reads from ${parent || 'its parent'}\n`);
  let last = '';
  while (Date.now() <= deadline) {
    const res = await get(`${cmd.apiUrl}${path}`);
    await expectStatus(res, 200, `GET ${path}`);
    const v = (await res.json()) as { state?: string; parent?: { snapshotId: string }; flatten?: FlattenProgressJson } | null;
    if (v === null || typeof v !== 'object') throw new CliError(`GET ${path} answered something other than a volume; is --api the URL of the Sledge API?`);
    if (v.state !== undefined && v.state !== 'active') {
      if (out.isTTY && last) out.write('\n');
      throw new CliError(`volume ${cmd.volumeId} is ${v.state}; the flatten stopped`);
    }
    if (!v.parent) {
      const done = `${cmd.volumeId} flattened in ${formatDuration((Date.now() - t0) / 1000)}${parent ? `: it no longer reads through ${parent}` : ''}`;
      out.write(out.isTTY ? `\r\x1b[2K${done}\n` : `${done}\n`);
      return 0;
    }
    parent = v.parent.snapshotId;
    const width = Math.max(10, Math.min(40, (out.columns ?? 120) - 80));
    const line = v.flatten ? `${cmd.volumeId} flattening: ${renderFlattenProgress(v.flatten, width)}` : `${cmd.volumeId} flattening: waiting for the worker`;
    if (out.isTTY) out.write(`\r\x1b[2K${line}`);
    else if (line !== last) out.write(`${line}\n`);
    last = line;
    await sleep(intervalMs);
  }
  if (out.isTTY) out.write('\n');
  out.write(`${cmd.volumeId}: still flattening after the timeout; the worker goes on (GET /volumes/${cmd.volumeId} shows its progress)\n`);
  return 1;
}
