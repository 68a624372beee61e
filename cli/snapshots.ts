/**
 * The snapshot and clone commands, wired by cli/main.ts (docs/snapshots.md):
 *
 *   sledge snapshot create <volumeId> --api URL [--name N] [--key KEY]   POST /volumes/{id}/snapshots
 *   sledge snapshot list <volumeId> --api URL                            GET /volumes/{id}/snapshots (every page)
 *   sledge snapshot delete <snapshotId> --api URL                        DELETE /snapshots/{id}
 *   sledge clone <snapshotId> --api URL [--size BYTES] [--name N]        POST /volumes { sourceSnapshotId }
 *
 * `parseSnapshotArgs` and `parseCloneArgs` only parse (UsageError for a wrong command line);
 * `runSnapshotCommand` talks HTTP to the API and writes one line per snapshot or volume. An
 * error answer or an unreachable API is thrown as a one-line CliError (cli/errors.ts).
 */
import { parseArgs } from 'node:util';
import { apiFetch, expectStatus, type Fetch, type Out } from './drives.ts';
import { apiError, ApiError, parseArgsUsageError, UsageError } from './errors.ts';
import { SIGNING_OPTIONS, signingFromValues, type SigningOptions } from './signing.ts';

export type SnapshotCommand =
  | { kind: 'create'; apiUrl: string; volumeId: string; name?: string; key?: string; signing?: SigningOptions }
  | { kind: 'list'; apiUrl: string; volumeId: string; signing?: SigningOptions }
  | { kind: 'delete'; apiUrl: string; snapshotId: string; signing?: SigningOptions }
  | { kind: 'clone'; apiUrl: string; snapshotId: string; sizeBytes?: number; name?: string; signing?: SigningOptions };

export const SNAPSHOT_SUBCOMMANDS = ['create', 'list', 'delete'] as const;

const UNITS: Record<string, number> = { '': 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };

/**
 * A size given on the command line: a number of bytes, or a whole number of KiB, MiB, GiB or TiB.
 *
 * @example
 * parseSize('8GiB', '--size'); // 8589934592
 */
export function parseSize(value: string, option: string): number {
  const m = /^(\d+)(KiB|MiB|GiB|TiB)?$/.exec(value);
  const n = m ? Number(m[1]) * UNITS[m[2] ?? '']! : Number.NaN;
  if (!m || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`${option} must be a positive number of bytes, or of KiB, MiB, GiB or TiB (e.g. 8GiB), got ${JSON.stringify(value)}`);
  }
  return n;
}

/**
 * A size that says exactly how many bytes: a whole number of the largest binary unit that
 * divides it, else the bytes.
 *
 * @example
 * formatSize(2 ** 40); // '1 TiB'
 * formatSize(2 ** 30 + 4096); // '1073745920 bytes'
 */
export function formatSize(n: number): string {
  for (const unit of ['TiB', 'GiB', 'MiB', 'KiB']) {
    const u = UNITS[unit]!;
    if (n >= u && n % u === 0) return `${n / u} ${unit}`;
  }
  return `${n} bytes`;
}

/** Checks a positional id's shape, and that it is the kind of id the command takes, not the other one. */
export function checkId(id: string, want: 'volume' | 'snapshot', usage: string): string {
  if (want === 'snapshot' && id.startsWith('vol-')) {
    throw new UsageError(`${id} is a volume id; ${usage} takes a snapshot id (\`sledge snapshot list ${id}\` lists the volume's)`);
  }
  if (want === 'volume' && id.startsWith('snap-')) throw new UsageError(`${id} is a snapshot id; ${usage} takes a volume id`);
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(id)) {
    throw new UsageError(`${JSON.stringify(id)} is not a ${want} id (like ${want === 'volume' ? 'vol-0123456789abcdef' : 'snap-0123456789abcdef-000000000042-a1b2c3'})`);
  }
  return id;
}

export function checkApi(api: string | undefined, usage: string): string {
  if (!api) throw new UsageError(`--api <url> is required for ${usage}`);
  let url: URL;
  try {
    url = new URL(api);
  } catch {
    throw new UsageError(`--api ${JSON.stringify(api)} is not a URL; give e.g. http://127.0.0.1:3000`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`--api must be an http or https URL, got ${url.protocol}`);
  return api.replace(/\/+$/, '');
}

/** Parses `--api` and the string options named, strictly: any other flag is an error. */
export function parse(
  args: string[],
  names: string[],
): { values: Record<string, string | undefined>; positionals: string[]; signing: { signing?: SigningOptions } } {
  let parsed;
  try {
    const options = { ...Object.fromEntries(['api', ...names].map((n) => [n, { type: 'string' as const }])), ...SIGNING_OPTIONS };
    parsed = parseArgs({ args, allowPositionals: true, strict: true, options });
  } catch (err) {
    throw parseArgsUsageError(err);
  }
  const { profile, region, unsigned, ...values } = parsed.values as Record<string, string | undefined> & { unsigned?: boolean };
  const signing = signingFromValues({ profile, region, unsigned });
  // Present only when given, so a command without them reads as before.
  return { values, positionals: parsed.positionals, signing: Object.keys(signing).length > 0 ? { signing } : {} };
}

export function onePositional(positionals: string[], usage: string, what: string): string {
  if (positionals.length !== 1) throw new UsageError(`${usage} takes exactly one ${what}, got ${positionals.length === 0 ? 'none' : positionals.join(' ')}`);
  return positionals[0]!;
}

/** Parses the words after `sledge snapshot`. Throws UsageError. */
export function parseSnapshotArgs(args: string[]): SnapshotCommand {
  const [sub, ...rest] = args;
  if (sub === undefined || sub.startsWith('-')) throw new UsageError(`sledge snapshot needs a subcommand first: ${SNAPSHOT_SUBCOMMANDS.join(', ')}`);
  const usage = `sledge snapshot ${sub}`;
  switch (sub) {
    case 'create': {
      const { values, positionals, signing } = parse(rest, ['name', 'key']);
      const volumeId = checkId(onePositional(positionals, usage, 'volume id'), 'volume', usage);
      const apiUrl = checkApi(values.api, usage);
      if (values.key !== undefined && !/^[A-Za-z0-9._:-]{1,64}$/.test(values.key)) {
        throw new UsageError(`--key must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, got ${JSON.stringify(values.key)}`);
      }
      return {
        kind: 'create',
        apiUrl,
        volumeId,
        ...(values.name !== undefined ? { name: values.name } : {}),
        ...(values.key !== undefined ? { key: values.key } : {}),
        ...signing,
      };
    }
    case 'list': {
      const { values, positionals, signing } = parse(rest, []);
      const volumeId = checkId(onePositional(positionals, usage, 'volume id'), 'volume', usage);
      return { kind: 'list', apiUrl: checkApi(values.api, usage), volumeId, ...signing };
    }
    case 'delete': {
      const { values, positionals, signing } = parse(rest, []);
      const snapshotId = checkId(onePositional(positionals, usage, 'snapshot id'), 'snapshot', usage);
      return { kind: 'delete', apiUrl: checkApi(values.api, usage), snapshotId, ...signing };
    }
    default:
      throw new UsageError(`unknown snapshot subcommand ${JSON.stringify(sub)}; the subcommands are ${SNAPSHOT_SUBCOMMANDS.join(', ')}`);
  }
}

/** Parses the words after `sledge clone`. Throws UsageError. */
export function parseCloneArgs(args: string[]): SnapshotCommand {
  const usage = 'sledge clone';
  const { values, positionals, signing } = parse(args, ['size', 'name']);
  const snapshotId = checkId(onePositional(positionals, usage, 'snapshot id'), 'snapshot', usage);
  const apiUrl = checkApi(values.api, usage);
  return {
    kind: 'clone',
    apiUrl,
    snapshotId,
    ...(values.size !== undefined ? { sizeBytes: parseSize(values.size, '--size') } : {}),
    ...(values.name !== undefined ? { name: values.name } : {}),
    ...signing,
  };
}

/** A snapshot as the API describes it (shared/api/openapi.json, `Snapshot`). */
export interface SnapshotJson {
  snapshotId: string;
  volumeId: string;
  name?: string;
  sizeBytes: number;
  blockSizeBytes: number;
  createdAt: string;
  commitSeq: number;
  state: string;
  parent?: { volumeId: string; snapshotId: string };
  dependants: string[];
}

/**
 * One line per snapshot: id, commit, size, creation time, then the name (quoted) and the
 * clones that read through it, where there are any. The id comes first, for scripts.
 *
 * @example
 * formatSnapshot(s); // 'snap-0a1b...-000000000003-c0ffee  commit 3  1 GiB  2026-12-01T14:00:00.000Z  "nightly"  clones vol-42'
 */
export function formatSnapshot(s: SnapshotJson): string {
  const parts = [s.snapshotId, `commit ${s.commitSeq}`, formatSize(s.sizeBytes), s.createdAt];
  if (s.name !== undefined) parts.push(JSON.stringify(s.name));
  if (s.parent) parts.push(`of a clone of ${s.parent.snapshotId}`);
  if (s.dependants.length > 0) parts.push(`clones ${s.dependants.join(',')}`);
  return parts.join('  ');
}

export interface VolumeJson {
  volumeId: string;
  name?: string;
  sizeBytes: number;
  parent?: { volumeId: string; snapshotId: string };
}

export async function send(get: Fetch, apiUrl: string, method: string, path: string, expected: number, body?: unknown, headers: Record<string, string> = {}): Promise<unknown> {
  const res = await get(`${apiUrl}${path}`, {
    method,
    ...(body === undefined ? { headers } : { body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } }),
  });
  await expectStatus(res, expected, `${method} ${path.split('?')[0]}`);
  const json = await res.json();
  if (json === null || typeof json !== 'object') throw apiError(res.status, null, res.text ?? '', `${method} ${path.split('?')[0]}`, null);
  return json;
}

/** Runs a parsed snapshot or clone command; returns the exit status. */
export async function runSnapshotCommand(cmd: SnapshotCommand, out: Out, opts: { fetch?: Fetch } = {}): Promise<number> {
  const get = opts.fetch ?? apiFetch(cmd.apiUrl, undefined, cmd.signing);
  switch (cmd.kind) {
    case 'create': {
      const path = `/volumes/${encodeURIComponent(cmd.volumeId)}/snapshots`;
      let s: SnapshotJson;
      try {
        s = (await send(get, cmd.apiUrl, 'POST', path, 201, cmd.name === undefined ? {} : { name: cmd.name }, cmd.key ? { 'x-sledge-reservation-key': cmd.key } : {})) as SnapshotJson;
      } catch (err) {
        // The API names its header; on the command line the key is an option.
        if (err instanceof ApiError && err.body?.error === 'FencedError' && cmd.key === undefined) {
          throw new ApiError(`${err.message}; give the reservation holder's key with --key`, err.status, err.body);
        }
        throw err;
      }
      out.write(`${formatSnapshot(s)}\n`);
      return 0;
    }
    case 'list': {
      let next: string | undefined;
      do {
        const q = new URLSearchParams({ limit: '1000', ...(next === undefined ? {} : { next }) });
        const page = (await send(get, cmd.apiUrl, 'GET', `/volumes/${encodeURIComponent(cmd.volumeId)}/snapshots?${q}`, 200)) as { snapshots?: SnapshotJson[]; next?: string };
        for (const s of page.snapshots ?? []) out.write(`${formatSnapshot(s)}\n`);
        next = page.next;
      } while (next !== undefined);
      return 0;
    }
    case 'delete': {
      await send(get, cmd.apiUrl, 'DELETE', `/snapshots/${encodeURIComponent(cmd.snapshotId)}`, 202);
      out.write(`${cmd.snapshotId} deleted; a background job purges its frozen pages\n`);
      return 0;
    }
    case 'clone': {
      const body = { sourceSnapshotId: cmd.snapshotId, ...(cmd.sizeBytes !== undefined ? { sizeBytes: cmd.sizeBytes } : {}), ...(cmd.name !== undefined ? { name: cmd.name } : {}) };
      const v = (await send(get, cmd.apiUrl, 'POST', '/volumes', 201, body)) as VolumeJson;
      const name = v.name !== undefined ? `  ${JSON.stringify(v.name)}` : '';
      out.write(`${v.volumeId}  ${formatSize(v.sizeBytes)}  clone of ${v.parent?.snapshotId ?? cmd.snapshotId} (volume ${v.parent?.volumeId ?? '?'})${name}\n`);
      return 0;
    }
  }
}
