/**
 * `sledge rebuild <volumeId>`: rebuild a volume's page map from its latest checkpoint and the
 * segments committed after it (docs/checkpoints.md), through the volume API.
 *
 * The `sledge` command (bin/sledge.js) wires this in; this module only talks HTTP, so it works
 * against the local control plane and a deployed stack alike.
 */
import type { RebuildReport } from '#shared/maintenance/checkpoints/rebuild.ts';
import type { RequestSigner } from '#shared/api/signing.ts';
import { apiError, CliError, jsonOrNull, unreachable } from './errors.ts';
import { defaultSigner } from './signing.ts';

/** What `POST /volumes/{volumeId}/rebuild` answers (shared/api/openapi.json, `RebuildReport`). */
export type { RebuildReport };

/**
 * The API refused or failed the rebuild, or could not be reached (`status` null); `status` and
 * the API's error body say why. The message is the line the CLI prints.
 */
export class RebuildRequestError extends CliError {
  override name = 'RebuildRequestError';
  constructor(
    message: string,
    readonly status: number | null,
    readonly body: { error?: string; message?: string; retryable?: boolean } | null,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A rebuild takes as long as the volume is large; past this the CLI gives up waiting (the rebuild may still finish). */
const REQUEST_TIMEOUT_MS = 15 * 60 * 1000;

/**
 * Rebuilds the page map of `volumeId` and returns the API's report.
 *
 * @example
 * const report = await rebuildVolume('http://127.0.0.1:3000', 'vol-0123456789abcdef');
 * console.log(formatRebuildReport(report));
 */
export async function rebuildVolume(
  apiUrl: string,
  volumeId: string,
  opts: { queue?: boolean; timeoutMs?: number; sign?: RequestSigner } = {},
): Promise<RebuildReport | { queued: true; volumeId: string }> {
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(volumeId)) throw new RebuildRequestError(`"${volumeId}" is not a volume id (like vol-0123456789abcdef)`, null, null);
  const url = `${apiUrl.replace(/\/+$/, '')}/volumes/${encodeURIComponent(volumeId)}/rebuild`;
  const request = JSON.stringify({ mode: opts.queue ? 'queue' : 'run' });
  const sign = opts.sign ?? (await defaultSigner(apiUrl));
  const headers = await sign({ method: 'POST', url, headers: { 'content-type': 'application/json' }, body: request });
  let res: Response;
  try {
    res = await fetch(url, {
      method: 'POST',
      headers,
      body: request,
      signal: AbortSignal.timeout(opts.timeoutMs ?? REQUEST_TIMEOUT_MS),
    });
  } catch (err) {
    throw new RebuildRequestError(unreachable(apiUrl, err).message, null, null, { cause: err });
  }
  const text = await res.text();
  const body = jsonOrNull(text);
  if (!res.ok) {
    const e = apiError(res.status, body, text, `POST ${new URL(url).pathname}`, res.headers.get('retry-after'));
    throw new RebuildRequestError(e.message, res.status, body as RebuildRequestError['body']);
  }
  if (res.status === 202) return body as { queued: true; volumeId: string };
  return body as RebuildReport;
}

/** A few lines for a terminal. */
export function formatRebuildReport(r: RebuildReport): string {
  const from = r.checkpoint ? `checkpoint ${r.checkpoint.checkpointId} (seq ${r.checkpoint.seq})` : 'the first write (no checkpoint)';
  const lines = [
    `rebuilt the page map of ${r.volumeId} at seq ${r.headSeq} from ${from} in ${r.elapsedMs} ms`,
    `  segments replayed ${r.segmentsReplayed}, ignored (never committed) ${r.segmentsIgnored}`,
    `  pages ${r.pages}: written ${r.pagesWritten}, deleted ${r.pagesDeleted}, unchanged ${r.pagesUnchanged}`,
  ];
  if (r.segmentRecordsRestored > 0) lines.push(`  segment records restored from the sleds ${r.segmentRecordsRestored}`);
  if (r.segmentsUnrecoverable.length > 0) {
    lines.push(`  UNRECOVERABLE: ${r.segmentsUnrecoverable.length} referenced segment(s) have no record and no readable chunk; their blocks cannot be read: ${r.segmentsUnrecoverable.join(', ')}`);
  }
  for (const u of r.unreadableCheckpoints) lines.push(`  skipped unreadable checkpoint ${u.checkpointId}: ${u.reason}`);
  return lines.join('\n');
}
