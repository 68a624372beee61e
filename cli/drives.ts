/**
 * The `sledge drives ...` commands' work, for the CLI to wire (docs/evacuation.md, section 4):
 *
 *   sledge drives [--api URL]                      listDrivesCommand
 *   sledge drives retire <sled>/<drive> [--watch]   retireDriveCommand, then watchEvacuation
 *   sledge drives watch <sled>/<drive>              watchEvacuation
 *
 * Each function talks to the API over HTTP, writes to the stream it is given, and returns an
 * exit status. `renderProgress` is pure.
 */
import type { EvacuationProgress } from '#shared/drives.ts';

type Out = Pick<NodeJS.WriteStream, 'write'> & { isTTY?: boolean; columns?: number };
type Fetch = (url: string, init?: { method?: string; body?: string; headers?: Record<string, string> }) => Promise<{ status: number; json(): Promise<unknown> }>;

export interface WatchOptions {
  /** Poll interval. Default 1000 ms. */
  intervalMs?: number;
  /** Give up after this long (exit status 1). Default 24 h. */
  timeoutMs?: number;
  /** Injected for tests; default the global fetch. */
  fetch?: Fetch;
}

interface DriveJson {
  driveId: string;
  state: string;
  writeErrors?: number;
  evacuation?: EvacuationProgress;
}

const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** `1536` -> `1.5 KiB`. */
export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

/** `3725` -> `1h02m05s`; null -> `--`. */
export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '--';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m${String(sec).padStart(2, '0')}s` : m > 0 ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}

/**
 * One line: a bar, chunks and bytes moved of the total, remaining, rate and ETA.
 *
 * @example
 * renderProgress(p, 30); // "[###########-------------------]  37% 370/1000 chunks  1.4 GiB/3.9 GiB  630 left (2.5 GiB)  12.0 MiB/s  ETA 3m34s"
 */
export function renderProgress(p: EvacuationProgress, barWidth = 30): string {
  const filled = Math.round(p.fractionDone * barWidth);
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}]`;
  const pct = `${String(Math.floor(p.fractionDone * 100)).padStart(3)}%`;
  const done = p.chunksMoved + p.chunksDropped;
  const doneBytes = p.bytesMoved + p.bytesDropped;
  const rebuilt = p.chunksRebuilt > 0 ? ` (${p.chunksRebuilt} rebuilt)` : '';
  const eta = p.state === 'complete' ? 'done' : `ETA ${formatDuration(p.etaSeconds)}`;
  return `${bar} ${pct} ${done}/${p.chunksTotal} chunks${rebuilt}  ${formatBytes(doneBytes)}/${formatBytes(p.bytesTotal)}  ${p.chunksRemaining} left (${formatBytes(p.bytesRemaining)})  ${formatBytes(p.bytesPerSecond)}/s  ${eta}`;
}

function driveUrl(apiUrl: string, driveId: string): string {
  const slash = driveId.indexOf('/');
  if (slash <= 0 || slash === driveId.length - 1) throw new RangeError(`a drive id is <sled>/<drive>, got ${JSON.stringify(driveId)}`);
  return `${apiUrl.replace(/\/$/, '')}/drives/${encodeURIComponent(driveId.slice(0, slash))}/${encodeURIComponent(driveId.slice(slash + 1))}`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls a drive and draws its evacuation's progress until the drive is retired (status 0), the
 * drive is not retiring (status 1: nothing to watch) or the timeout passes (status 1). On a
 * terminal the bar redraws in place; otherwise one line per change.
 */
export async function watchEvacuation(apiUrl: string, driveId: string, out: Out, opts: WatchOptions = {}): Promise<number> {
  const get = opts.fetch ?? (fetch as unknown as Fetch);
  const intervalMs = opts.intervalMs ?? 1000;
  const deadline = Date.now() + (opts.timeoutMs ?? 24 * 3600_000);
  const url = driveUrl(apiUrl, driveId);
  let last = '';
  for (let polls = 0; Date.now() <= deadline; polls++) {
    const res = await get(url);
    const body = (await res.json()) as DriveJson & { message?: string };
    if (res.status !== 200) {
      out.write(`${driveId}: ${res.status} ${body.message ?? ''}\n`);
      return 1;
    }
    if (!body.evacuation || (body.state !== 'retiring' && body.state !== 'retired')) {
      out.write(`${driveId} is ${body.state}; no evacuation to watch\n`);
      return 1;
    }
    const width = Math.max(10, Math.min(40, (out.columns ?? 120) - 90));
    const line = `${driveId} ${body.state}: ${renderProgress(body.evacuation, width)}`;
    if (out.isTTY) out.write(`\r\x1b[2K${line}`);
    else if (line !== last) out.write(`${line}\n`);
    last = line;
    if (body.state === 'retired') {
      if (out.isTTY) out.write('\n');
      return 0;
    }
    await sleep(intervalMs);
  }
  if (out.isTTY) out.write('\n');
  out.write(`${driveId}: still evacuating after the timeout\n`);
  return 1;
}

/** Prints the registry: one line per drive, with evacuation progress where there is one. */
export async function listDrivesCommand(apiUrl: string, out: Out, opts: Pick<WatchOptions, 'fetch'> = {}): Promise<number> {
  const get = opts.fetch ?? (fetch as unknown as Fetch);
  const res = await get(`${apiUrl.replace(/\/$/, '')}/drives`);
  const body = (await res.json()) as { drives?: DriveJson[]; message?: string };
  if (res.status !== 200 || !body.drives) {
    out.write(`GET /drives: ${res.status} ${body.message ?? ''}\n`);
    return 1;
  }
  for (const d of body.drives) {
    const extra = d.evacuation ? `  ${renderProgress(d.evacuation, 20)}` : '';
    out.write(`${d.driveId.padEnd(60)} ${d.state.padEnd(9)} errors ${String(d.writeErrors ?? 0).padStart(3)}${extra}\n`);
  }
  return 0;
}

/** Marks a drive retiring (queues its evacuation); with `watch`, then follows it. */
export async function retireDriveCommand(apiUrl: string, driveId: string, out: Out, opts: WatchOptions & { watch?: boolean; reason?: string } = {}): Promise<number> {
  const post = opts.fetch ?? (fetch as unknown as Fetch);
  const res = await post(`${driveUrl(apiUrl, driveId)}/retire`, {
    method: 'POST',
    body: JSON.stringify({ reason: opts.reason ?? 'operator (sledge CLI)' }),
    headers: { 'content-type': 'application/json' },
  });
  const body = (await res.json()) as DriveJson & { message?: string };
  if (res.status !== 202) {
    out.write(`retire ${driveId}: ${res.status} ${body.message ?? ''}\n`);
    return 1;
  }
  out.write(`${driveId} is ${body.state}; evacuation ${body.evacuation?.run ?? ''} queued\n`);
  return opts.watch ? watchEvacuation(apiUrl, driveId, out, opts) : 0;
}
