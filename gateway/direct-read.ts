/**
 * Direct data reads (docs/nbd-gateway.md, "Direct data reads"): the gateway fetches the bytes a
 * read plan names straight from the sleds with the plan's presigned URLs, and checks every
 * granule's CRC32C against the plan. Any failure is a DirectReadError, and the caller reads the
 * range through the API instead: a plan is a hint, never the source of truth.
 */
import { crc32c } from '#shared/data/crc32c.ts';
// The plan's shape is the head's; a type-only import loads nothing of the head's code here.
import type { PlannedGet, ReadPlan } from '#shared/data/read-plan.ts';
import { getInto, type HttpAnswer } from '#shared/net/http.ts';

/** Something in a plan could not be used; the range is read through the API instead. */
export class DirectReadError extends Error {
  override name = 'DirectReadError';
}

/** Checks a plan's shape against the read it answers, so that a bad plan fails here, not while copying. */
export function checkPlan(plan: ReadPlan, offset: number, length: number): void {
  if (plan.offset !== offset || plan.length !== length || !Array.isArray(plan.gets)) throw new DirectReadError(`the plan answers another range`);
  for (const g of plan.gets) {
    const bytes = g.end - g.start;
    const granules = Math.ceil(bytes / g.granuleBytes);
    const sane = typeof g.url === 'string' && Number.isSafeInteger(g.start) && g.start >= 0 && bytes > 0 && g.granuleBytes > 0 && g.crcs.length === granules;
    if (!sane) throw new DirectReadError(`a planned GET is malformed`);
    for (const p of g.pieces) {
      const inside = p.length > 0 && p.from >= 0 && p.from + p.length <= bytes && p.at >= 0 && p.at + p.length <= length;
      if (!inside) throw new DirectReadError(`a planned piece lies outside its GET or the read`);
    }
  }
}

/**
 * Sends one planned GET (with exactly the signed Range header) and returns its verified body.
 * Throws DirectReadError on any status but 206, a body of another length, or a granule that
 * fails its checksum.
 */
export async function fetchPlanned(g: PlannedGet, timeoutMs: number, into?: Buffer): Promise<Buffer> {
  let answer: HttpAnswer;
  try {
    // The body lands in the read's buffer (or one of its own) straight from the socket (http.ts).
    answer = await getInto(g.url, { range: `bytes=${g.start}-${g.end - 1}` }, into ?? Buffer.allocUnsafe(g.end - g.start), 206, timeoutMs);
  } catch (err) {
    throw new DirectReadError(`chunk GET failed: ${(err as Error).message}`, { cause: err });
  }
  const { status, body } = answer;
  // 403: expired or refused URL; 404: the chunk is gone (GC, evacuation, loss); 200: the range was ignored.
  if (status !== 206) throw new DirectReadError(`chunk GET answered ${status}`);
  if (body.length !== g.end - g.start) throw new DirectReadError(`chunk GET returned ${body.length} bytes, not ${g.end - g.start}`);
  for (let i = 0; i < g.crcs.length; i++) {
    const granule = body.subarray(i * g.granuleBytes, Math.min(body.length, (i + 1) * g.granuleBytes));
    if (crc32c(granule) !== g.crcs[i]) throw new DirectReadError(`granule ${i} of a chunk GET fails its checksum`);
  }
  return body;
}

/**
 * The bytes of a plan's read: every planned GET at once, the rest zeros. A GET whose body is
 * one piece of the answer (a whole chunk range of a segment that a sequential writer made)
 * lands in the answer's buffer itself; others land in their own and their pieces are copied.
 * `alloc` gives the answer's buffer (the caller's memory, e.g. pretouched.ts).
 */
export async function readPlanned(plan: ReadPlan, timeoutMs: number, alloc: (bytes: number) => Buffer = Buffer.allocUnsafe): Promise<Buffer> {
  const out = alloc(plan.length);
  // Zeros where no piece goes (never written, trimmed), and only there.
  const covered = plan.gets.flatMap((g) => g.pieces.map((p) => [p.at, p.at + p.length] as const)).sort((x, y) => x[0] - y[0]);
  let pos = 0;
  for (const [s, t] of covered) {
    if (s > pos) out.fill(0, pos, s);
    pos = Math.max(pos, t);
  }
  if (pos < plan.length) out.fill(0, pos);
  await Promise.all(
    plan.gets.map(async (g) => {
      const only = g.pieces.length === 1 ? g.pieces[0]! : undefined;
      if (only && only.from === 0 && only.length === g.end - g.start) {
        const target = out.subarray(only.at, only.at + only.length);
        const body = await fetchPlanned(g, timeoutMs, target);
        if (body !== target) body.copy(target);
        return;
      }
      const body = await fetchPlanned(g, timeoutMs);
      for (const p of g.pieces) body.copy(out, p.at, p.from, p.from + p.length);
    }),
  );
  return out;
}
