/**
 * shared/api/openapi.json and the router in shared/api/routes.ts describe one API; this test keeps them
 * in step, with no network.
 *
 * - The routes: the router's routes are recorded as shared/api/routes.ts registers them (a spy on
 *   `Router.prototype.on`), and must be exactly the documented paths and methods.
 * - The statuses: for each route, the statuses its handler can answer are derived from the
 *   source, and the document must list them all: its success statuses exactly (the `status:`
 *   of each answer in the handler), and every error status it can raise. An error status is
 *   derived from a call graph of the .ts files under shared/: a function can raise the status of every
 *   SledgeError it constructs and of every function it calls. The graph is by name (an
 *   over-approximation where two modules use one name) and stops at errors thrown by the AWS
 *   SDK (which are not SledgeErrors and become 500s), so the document may list more than this
 *   finds, never less.
 * - The inputs: each route's path parameters, the query parameters and reservation-key header
 *   its handler reads, and a request body where it reads one, are documented.
 *
 * 405 (another method on a known path) and 500 (a bug) can be answered for any path; the
 * document says so once, in `info.description`, instead of on every operation.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import * as errors from '#shared/core/errors.ts';
import { Router } from '#shared/api/http.ts';
import openapi from '#shared/api/openapi.json' with { type: 'json' };

/** The project's own shared/ folder of domain code (the API's handlers live there). */
const SHARED_DIR = join(fileURLToPath(new URL('../..', import.meta.url)), 'shared') + '/';
const METHODS = ['get', 'put', 'post', 'patch', 'delete', 'head', 'options'] as const;

interface Operation {
  parameters?: Array<{ name?: string; in?: string; $ref?: string }>;
  requestBody?: unknown;
  responses: Record<string, unknown>;
}
type PathItem = Partial<Record<(typeof METHODS)[number], Operation>> & { parameters?: Operation['parameters'] };
const paths = (openapi as unknown as { paths: Record<string, PathItem> }).paths;

/** `GET /volumes/{volumeId}`: one route, as both sides name it. */
const key = (method: string, path: string) => `${method.toUpperCase()} ${path}`;

/** The documented operations, by route key. */
function documentedOperations(): Map<string, Operation> {
  const ops = new Map<string, Operation>();
  for (const [path, item] of Object.entries(paths)) {
    for (const method of METHODS) if (item[method]) ops.set(key(method, path), item[method]!);
  }
  return ops;
}

/** HTTP status of each SledgeError class, read from the classes themselves. */
function errorStatuses(): Map<string, number> {
  const out = new Map<string, number>();
  for (const [name, value] of Object.entries(errors)) {
    if (typeof value !== 'function' || !(value.prototype instanceof errors.SledgeError)) continue;
    const instance = new (value as unknown as new (message: string) => errors.SledgeError)('probe');
    out.set(name, instance.status);
  }
  return out;
}

/**
 * The top-level functions of the .ts files under shared/, by name, with their source text. A declaration is a
 * line at column 0 that starts `function`, `async function` or `const name =` (optionally
 * exported); its text runs to the next line at column 0 that does not close it.
 */
function sharedFunctions(): Map<string, string[]> {
  const fns = new Map<string, string[]>();
  const files = (readdirSync(SHARED_DIR, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
  for (const file of files) {
    let name: string | null = null;
    let body: string[] = [];
    const flush = () => {
      if (name) fns.set(name, [...(fns.get(name) ?? []), body.join('\n')]);
      name = null;
      body = [];
    };
    for (const line of readFileSync(join(SHARED_DIR, file), 'utf8').split('\n')) {
      const decl = /^(?:export\s+)?(?:async\s+)?function\*?\s+(\w+)/.exec(line) ?? /^(?:export\s+)?const\s+(\w+)\s*(?::[^=]+)?=/.exec(line);
      if (decl) {
        flush();
        name = decl[1]!;
        body = [line];
      } else if (/^[^\s})\]]/.test(line)) flush();
      else if (name) body.push(line);
    }
    flush();
  }
  return fns;
}

/** The error statuses code can raise: its own `new XError(` and, transitively, its callees'. */
function errorStatusDeriver(fns: Map<string, string[]>, statusOf: Map<string, number>) {
  const memo = new Map<string, Set<number>>();
  const ofText = (text: string, visiting: Set<string>): Set<number> => {
    const out = new Set<number>();
    for (const [cls, status] of statusOf) if (new RegExp(`\\bnew ${cls}\\(`).test(text)) out.add(status);
    for (const m of text.matchAll(/\b(\w+)\s*\(/g)) for (const s of ofFunction(m[1]!, visiting)) out.add(s);
    return out;
  };
  const ofFunction = (name: string, visiting: Set<string>): Set<number> => {
    const known = memo.get(name);
    if (known) return known;
    // A recursive call adds nothing the outer walk of the same function does not find.
    if (!fns.has(name) || visiting.has(name)) return new Set();
    visiting.add(name);
    const out = new Set<number>();
    for (const body of fns.get(name)!) for (const s of ofText(body, visiting)) out.add(s);
    visiting.delete(name);
    memo.set(name, out);
    return out;
  };
  return (text: string) => ofText(text, new Set());
}

/** Each `.on('METHOD', '/path', handler)` of shared/api/routes.ts, with the handler's source text. */
function routeSources(): Map<string, string> {
  const source = readFileSync(join(SHARED_DIR, 'api/routes.ts'), 'utf8');
  const out = new Map<string, string>();
  for (const part of source.split(/\n\s*\.on\(/).slice(1)) {
    const m = /^'([A-Z]+)',\s*'([^']+)',/.exec(part);
    if (!m) throw new Error(`shared/api/routes.ts: a route registration this test cannot read: .on(${part.slice(0, 80)}`);
    out.set(key(m[1]!, m[2]!), part);
  }
  return out;
}

/** The success statuses a handler answers: the numbers in each `status:` of its results. */
function successStatuses(handler: string): Set<number> {
  const out = new Set<number>();
  for (const m of handler.matchAll(/\bstatus:\s*([^,}]+)/g)) for (const n of m[1]!.matchAll(/\b([1-5]\d\d)\b/g)) out.add(Number(n[1]));
  return out;
}

const sorted = (xs: Iterable<number | string>) => [...xs].map(String).sort();

let routes: Array<{ method: string; path: string }>;
let sources: Map<string, string>;
let docs: Map<string, Operation>;
let deriveErrors: (text: string) => Set<number>;

beforeAll(async () => {
  // Record each route as the module registers it. The router keeps only a compiled pattern,
  // so the template path is taken at registration.
  const on = vi.spyOn(Router.prototype, 'on');
  await import('#shared/api/routes.ts');
  routes = on.mock.calls.map(([method, path]) => ({ method, path }));
  on.mockRestore();
  sources = routeSources();
  docs = documentedOperations();
  deriveErrors = errorStatusDeriver(sharedFunctions(), errorStatuses());
});

describe('shared/api/openapi.json and the router', () => {
  it('reads the routes the way the router registers them', () => {
    // Guards the source reading below: it must see exactly the routes registered at runtime.
    expect(routes.length).toBeGreaterThan(20);
    expect([...sources.keys()]).toEqual(routes.map((r) => key(r.method, r.path)));
  });

  it('documents every route the router serves', () => {
    const undocumented = routes.map((r) => key(r.method, r.path)).filter((k) => !docs.has(k));
    expect(undocumented, 'routes missing from shared/api/openapi.json').toEqual([]);
  });

  it('serves every route the document describes', () => {
    const served = new Set(routes.map((r) => key(r.method, r.path)));
    const unserved = [...docs.keys()].filter((k) => !served.has(k));
    expect(unserved, 'documented routes the router in shared/api/routes.ts does not serve').toEqual([]);
  });

  it('registers each route once', () => {
    const keys = routes.map((r) => key(r.method, r.path));
    expect(keys.filter((k, i) => keys.indexOf(k) !== i)).toEqual([]);
  });

  it('documents exactly the success statuses each handler answers', () => {
    const mismatched: string[] = [];
    for (const [route, handler] of sources) {
      const documented = sorted(Object.keys(docs.get(route)?.responses ?? {}).filter((s) => s.startsWith('2')));
      const answered = sorted(successStatuses(handler));
      if (answered.length === 0) mismatched.push(`${route}: no status found in the handler`);
      else if (JSON.stringify(documented) !== JSON.stringify(answered)) mismatched.push(`${route}: answers ${answered.join(',')}, documents ${documented.join(',')}`);
    }
    expect(mismatched).toEqual([]);
  });

  it('documents every error status each route can raise', () => {
    const missing: string[] = [];
    for (const [route, handler] of sources) {
      const documented = new Set(Object.keys(docs.get(route)?.responses ?? {}));
      const raised = sorted(deriveErrors(handler));
      const lacking = raised.filter((s) => !documented.has(s));
      if (lacking.length > 0) missing.push(`${route}: can answer ${lacking.join(',')}, not documented`);
    }
    expect(missing).toEqual([]);
  });

  it('finds the error statuses it should (the derivation itself works)', () => {
    // Known answers, each traced by hand through the code: a malformed body (400, 413, 415),
    // a missing volume (404), a fenced write (409), a rebuild fence or unreadable chunks (503).
    expect(sorted(deriveErrors(sources.get('PUT /volumes/{volumeId}/data')!))).toEqual(['400', '404', '409', '413', '415', '503']);
    expect(sorted(deriveErrors(sources.get('GET /openapi.json')!))).toEqual([]);
    expect(sorted(deriveErrors(sources.get('GET /volumes/{volumeId}')!))).toContain('404');
  });

  it('documents each route\'s path parameters, the query parameters and header it reads, and its body', () => {
    const problems: string[] = [];
    for (const [route, handler] of sources) {
      const [method, path] = route.split(' ') as [string, string];
      const op = docs.get(route);
      if (!op) continue;
      const params = [...(paths[path]?.parameters ?? []), ...(op.parameters ?? [])];
      const named = (where: string) => new Set(params.filter((p) => p.in === where).map((p) => p.name));
      for (const m of path.matchAll(/\{(\w+)\}/g)) if (!named('path').has(m[1])) problems.push(`${route}: path parameter ${m[1]} not documented`);
      const queried = [...handler.matchAll(/intQuery\(req,\s*'(\w+)'\)|req\.query\.(\w+)/g)].map((m) => m[1] ?? m[2]);
      for (const q of queried) if (!named('query').has(q)) problems.push(`${route}: query parameter ${q} not documented`);
      if (/\b(writer|requestKey)\(req\)/.test(handler) && !named('header').has('x-sledge-reservation-key')) problems.push(`${route}: header x-sledge-reservation-key not documented`);
      const readsBody = /\b(jsonBody|optionalJsonBody)\(req[,)]|req\.body\b/.test(handler);
      if (readsBody && !op.requestBody) problems.push(`${route}: reads a body, documents none`);
      if (!readsBody && op.requestBody) problems.push(`${route}: documents a body it never reads (${method})`);
    }
    expect(problems).toEqual([]);
  });

  it('says once that any path may answer 405 and 500', () => {
    const description = (openapi as { info: { description: string } }).info.description;
    expect(description).toMatch(/\b405\b/);
    expect(description).toMatch(/\b500\b/);
  });
});
