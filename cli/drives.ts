/**
 * The drive commands' work, wired by cli/main.ts (docs/evacuation.md, section 4):
 *
 *   sledge drives --api URL                          listDrivesCommand
 *   sledge retire <sled>/<drive> --api URL [--watch] retireDriveCommand, then watchEvacuation
 *   sledge reactivate <sled>/<drive> --api URL       reactivateDriveCommand
 *   sledge evacuation <sled>/<drive> --api URL       watchEvacuation
 *
 * Each function talks to the API over HTTP, writes to the stream it is given, and returns an
 * exit status; an error answer or an unreachable API is thrown as a one-line CliError
 * (cli/errors.ts). `renderProgress` is pure.
 */
import type { EvacuationProgress } from '#shared/maintenance/evacuation-progress.ts';
import type { RequestSigner } from '#shared/api/signing.ts';
import { apiError, jsonOrNull, UsageError, unreachable } from './errors.ts';
import { defaultSigner, type SigningOptions } from './signing.ts';

export type Out = Pick<NodeJS.WriteStream, 'write'> & { isTTY?: boolean; columns?: number };
/** One answer of the API: its status and parsed JSON body (null when the body is not JSON). */
interface Answer {
  status: number;
  json(): Promise<unknown>;
  /** The raw body, for an error line when the body is not Sledge's error JSON. */
  text?: string;
  retryAfter?: string | null;
}
export type Fetch = (url: string, init?: { method?: string; body?: string; headers?: Record<string, string> }) => Promise<Answer>;

/** One request should not keep an operator waiting longer than this; a stuck API is reported. */
const REQUEST_TIMEOUT_MS = 30_000;

/**
 * The global fetch, signed (SigV4, `sign` or the default credential chain), with a timeout,
 * network failures turned into one clear line about reaching `apiUrl`, and bodies that are not
 * JSON read as null rather than thrown.
 */
export function apiFetch(apiUrl: string, sign?: RequestSigner, signing?: SigningOptions): Fetch {
  let signer: Promise<RequestSigner> | undefined;
  return async (url, init) => {
    signer ??= sign ? Promise.resolve(sign) : defaultSigner(apiUrl, signing);
    const method = init?.method ?? 'GET';
    const headers = await (await signer)({ method, url, ...(init?.headers ? { headers: init.headers } : {}), ...(init?.body !== undefined ? { body: init.body } : {}) });
    let res: Response;
    try {
      res = await fetch(url, { ...init, method, headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
    } catch (err) {
      throw unreachable(apiUrl, err);
    }
    const text = await res.text();
    const body = jsonOrNull(text);
    return { status: res.status, json: async () => body, text, retryAfter: res.headers.get('retry-after') };
  };
}

/** Throws the one-line error for an answer other than `expected`. */
export async function expectStatus(res: Answer, expected: number, request: string): Promise<void> {
  if (res.status === expected) return;
  throw apiError(res.status, await res.json(), res.text ?? '', request, res.retryAfter ?? null);
}

export interface WatchOptions {
  /** Poll interval. Default 1000 ms. */
  intervalMs?: number;
  /** Give up after this long (exit status 1). Default 24 h. */
  timeoutMs?: number;
  /** Injected for tests; default the global fetch, signed with `sign`. */
  fetch?: Fetch;
  /** Signs requests; default the AWS credential chain (cli/signing.ts). */
  sign?: RequestSigner;
}

interface DriveJson {
  driveId: string;
  state: string;
  writeErrors?: number;
  lostChunks?: number;
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
  if (slash <= 0 || slash === driveId.length - 1) throw new UsageError(`a drive id is <sled>/<drive> (as \`sledge drives\` lists them), got ${JSON.stringify(driveId)}`);
  return `${apiUrl.replace(/\/$/, '')}/drives/${encodeURIComponent(driveId.slice(0, slash))}/${encodeURIComponent(driveId.slice(slash + 1))}`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls a drive and draws its evacuation's progress until the drive is retired (status 0), the
 * drive is not retiring (status 1: nothing to watch) or the timeout passes (status 1). On a
 * terminal the bar redraws in place; otherwise one line per change.
 */
export async function watchEvacuation(apiUrl: string, driveId: string, out: Out, opts: WatchOptions = {}): Promise<number> {
  const get = opts.fetch ?? apiFetch(apiUrl, opts.sign);
  const intervalMs = opts.intervalMs ?? 1000;
  const deadline = Date.now() + (opts.timeoutMs ?? 24 * 3600_000);
  const url = driveUrl(apiUrl, driveId);
  let last = '';
  while (Date.now() <= deadline) {
    const res = await get(url);
    await expectStatus(res, 200, `GET ${new URL(url).pathname}`);
    const body = (await res.json()) as DriveJson;
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

/**
 * Prints the registry: one line per drive with its state and write errors, and evacuation
 * progress where there is one. No usage column: the registry's `usedBytes` is not maintained
 * (docs/evacuation.md, section 4).
 */
export async function listDrivesCommand(apiUrl: string, out: Out, opts: Pick<WatchOptions, 'fetch' | 'sign'> = {}): Promise<number> {
  const get = opts.fetch ?? apiFetch(apiUrl, opts.sign);
  const res = await get(`${apiUrl.replace(/\/$/, '')}/drives`);
  await expectStatus(res, 200, 'GET /drives');
  const body = (await res.json()) as { drives?: DriveJson[] };
  if (!Array.isArray(body?.drives)) throw apiError(res.status, null, res.text ?? '', 'GET /drives', null);
  for (const d of body.drives) {
    const extra = d.evacuation ? `  ${renderProgress(d.evacuation, 20)}` : '';
    out.write(`${d.driveId.padEnd(60)} ${d.state.padEnd(9)} errors ${String(d.writeErrors ?? 0).padStart(3)} lost ${String(d.lostChunks ?? 0).padStart(3)}${extra}\n`);
  }
  return 0;
}

/** Marks a drive retiring (queues its evacuation); with `watch`, then follows it. */
export async function retireDriveCommand(apiUrl: string, driveId: string, out: Out, opts: WatchOptions & { watch?: boolean; reason?: string } = {}): Promise<number> {
  const post = opts.fetch ?? apiFetch(apiUrl, opts.sign);
  const url = `${driveUrl(apiUrl, driveId)}/retire`;
  const res = await post(url, {
    method: 'POST',
    body: JSON.stringify({ reason: opts.reason ?? 'operator (sledge CLI)' }),
    headers: { 'content-type': 'application/json' },
  });
  await expectStatus(res, 202, `POST ${new URL(url).pathname}`);
  const body = (await res.json()) as DriveJson;
  out.write(`${driveId} is ${body.state}; evacuation ${body.evacuation?.run ?? ''} queued\n`);
  return opts.watch ? watchEvacuation(apiUrl, driveId, out, opts) : 0;
}

/** Puts a drive back in service (active, counts cleared, any evacuation stopped). */
export async function reactivateDriveCommand(apiUrl: string, driveId: string, out: Out, opts: Pick<WatchOptions, 'fetch' | 'sign'> = {}): Promise<number> {
  const post = opts.fetch ?? apiFetch(apiUrl, opts.sign);
  const url = `${driveUrl(apiUrl, driveId)}/reactivate`;
  const res = await post(url, { method: 'POST' });
  await expectStatus(res, 200, `POST ${new URL(url).pathname}`);
  const body = (await res.json()) as DriveJson;
  out.write(`${driveId} is ${body.state}\n`);
  return 0;
}
