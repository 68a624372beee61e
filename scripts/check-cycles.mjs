#!/usr/bin/env node
/**
 * Fails when modules import each other in a cycle. `npm test` runs it before anything else.
 *
 * madge cannot parse TypeScript here: its parser needs the TypeScript 5 JavaScript API, and this
 * project compiles with TypeScript 7, which has none. esbuild (already a dev dependency, the
 * bundler of the Lambda functions) resolves every import exactly as the bundles do, including
 * the `#shared/*` aliases, and its metafile is the import graph. Imports used only as types
 * are erased by esbuild, so a cycle reported here is one that exists at run time.
 *
 * Usage: node scripts/check-cycles.mjs [folder ...]   (default: shared lambdas local cli gateway)
 */
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { build } from 'esbuild';

const root = new URL('..', import.meta.url).pathname;
const folders = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['shared', 'lambdas', 'local', 'cli', 'gateway'];

function tsFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...tsFiles(path));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

const entryPoints = folders.flatMap((f) => tsFiles(join(root, f)));
const result = await build({
  entryPoints,
  bundle: true,
  write: false,
  metafile: true,
  platform: 'node',
  format: 'esm',
  packages: 'external',
  outdir: '/tmp/sledge-check-cycles',
  logLevel: 'silent',
  absWorkingDir: root,
});

/** Import graph over the project's own files. */
const graph = new Map();
for (const [file, input] of Object.entries(result.metafile.inputs)) {
  if (file.includes('node_modules')) continue;
  graph.set(
    file,
    input.imports.filter((i) => !i.external && !i.path.includes('node_modules')).map((i) => i.path),
  );
}

// Tarjan's strongly connected components: every component of more than one module is a cycle.
let index = 0;
const indexes = new Map();
const lowlinks = new Map();
const stack = [];
const onStack = new Set();
const cycles = [];
function connect(v) {
  indexes.set(v, index);
  lowlinks.set(v, index);
  index++;
  stack.push(v);
  onStack.add(v);
  for (const w of graph.get(v) ?? []) {
    if (!indexes.has(w)) {
      connect(w);
      lowlinks.set(v, Math.min(lowlinks.get(v), lowlinks.get(w)));
    } else if (onStack.has(w)) lowlinks.set(v, Math.min(lowlinks.get(v), indexes.get(w)));
  }
  if (lowlinks.get(v) === indexes.get(v)) {
    const component = [];
    let w;
    do {
      w = stack.pop();
      onStack.delete(w);
      component.push(w);
    } while (w !== v);
    const selfImport = component.length === 1 && (graph.get(v) ?? []).includes(v);
    if (component.length > 1 || selfImport) cycles.push(component.sort());
  }
}
for (const v of graph.keys()) if (!indexes.has(v)) connect(v);

const checked = graph.size;
if (cycles.length > 0) {
  console.error(`check-cycles: ${cycles.length} import cycle(s) among ${checked} modules:`);
  for (const c of cycles) console.error(`  ${c.map((f) => relative(root, join(root, f))).join(' <-> ')}`);
  process.exit(1);
}
console.log(`check-cycles: no import cycles among ${checked} modules (${folders.join(', ')})`);
