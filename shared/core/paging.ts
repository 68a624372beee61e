/**
 * The API's paged lists: how `limit` and `next` are read, and how a page stays under what a Lambda
 * result carries. Every list takes them the same way (`GET /volumes`, `/volumes/{id}/snapshots`,
 * `/consistency-groups/{id}/snapshots`, `/backups`, `/restores`, `/group-backups`,
 * `/group-restores`; `/snapshots/{id}/changed-blocks` with its own bounds): `limit` is a plain
 * decimal integer, and a `next` that no earlier answer of that list could have given is a 400
 * before anything is read (README, "Using a volume"; docs/backup.md, "Paging").
 */
import { InvalidInputError } from './errors.ts';

/** A page holds `limit` entries: 1 to 1000, 100 when not given. */
export const PAGE_LIMIT_DEFAULT = 100;
export const PAGE_LIMIT_MAX = 1000;
/**
 * A page's entries, as the Lambda result carries them (JSON in a JSON string), stop at this many
 * bytes, under the 6 MB Lambda carries: only group listings (up to 64 members each) come near it.
 */
export const PAGE_BYTES_MAX = 4 * 1024 * 1024;

export interface Page<T> {
  items: T[];
  /** The id after which the next page starts (the answer's `next`); absent when the list has no more. */
  next?: string;
}

/**
 * The value of a query parameter written as a plain decimal integer (digits only: no sign, point,
 * exponent, hex or binary prefix, or spaces, all of which `Number()` would take), or undefined
 * for anything else, or one too large to be exact.
 */
export function decimalParam(raw: string): number | undefined {
  if (!/^[0-9]+$/.test(raw)) return undefined;
  const n = Number(raw);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * The `limit` query parameter: a 400 unless a plain decimal integer from 1 to `max` (1000 unless
 * a list says otherwise); `fallback` (100) when not given.
 */
export function pageLimit(limitParam: string | undefined, bounds: { max?: number; fallback?: number } = {}): number {
  const max = bounds.max ?? PAGE_LIMIT_MAX;
  if (limitParam === undefined) return bounds.fallback ?? PAGE_LIMIT_DEFAULT;
  const limit = decimalParam(limitParam);
  if (limit === undefined || limit < 1 || limit > max) throw new InvalidInputError(`limit must be an integer from 1 to ${max}, got ${limitParam}`);
  return limit;
}

/**
 * The `next` query parameter: the id after which the page starts (undefined, as an empty one: the
 * list's start). A token that no answer of this list could have given (`valid` says which ids it
 * holds: not a garbled one, nor one of another list or of another volume's or group's) is a 400,
 * before anything is read. `list` names the list in the message (`volumes`, `the snapshots of vol-...`).
 */
export function pageStart(next: string | undefined, list: string, valid: (id: string) => boolean): string | undefined {
  if (next === undefined || next === '') return undefined;
  if (!valid(next)) {
    const shown = JSON.stringify(next.length > 100 ? `${next.slice(0, 100)}...` : next);
    throw new InvalidInputError(`next must be a token from an earlier answer listing ${list}, got ${shown}`);
  }
  return next;
}

/**
 * A page's views, as many of the first as fit PAGE_BYTES_MAX (at least one), and the `next` that
 * continues after the last one kept.
 */
export function fitPage<V>(views: V[], idOf: (view: V) => string, next: string | undefined): Page<V> {
  let bytes = 0;
  for (let i = 0; i < views.length; i++) {
    bytes += Buffer.byteLength(JSON.stringify(JSON.stringify(views[i])));
    if (bytes > PAGE_BYTES_MAX && i > 0) return { items: views.slice(0, i), next: idOf(views[i - 1]!) };
  }
  return next === undefined ? { items: views } : { items: views, next };
}
