#!/usr/bin/env node
/**
 * Runs the vitest projects as two processes side by side: `unit`, `integration` and
 * `integration-portable` in one, `integration-b` in the other. Each integration project runs
 * its files one at a time against a control plane of its own; vitest runs such projects one
 * after the other inside one process, so two processes are what lets them share the machine's
 * two cores. Arguments are passed to both (e.g. a file filter). Exits non-zero if either fails.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

const args = process.argv.slice(2);
const runs = [
  { name: 'a', projects: ['unit', 'integration', 'integration-portable'] },
  { name: 'b', projects: ['integration-b'] },
];

function run({ name, projects }) {
  // A file filter may match nothing in one of the two runs; without one, every project must have files.
  const filtered = args.length > 0 ? ['--passWithNoTests'] : [];
  const child = spawn(process.execPath, ['node_modules/vitest/vitest.mjs', 'run', ...projects.flatMap((p) => ['--project', p]), ...filtered, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, FORCE_COLOR: process.env.FORCE_COLOR ?? '0' },
  });
  // Each line carries its run's name, so the two logs can be told apart.
  for (const [stream, out] of [
    [child.stdout, process.stdout],
    [child.stderr, process.stderr],
  ]) {
    createInterface({ input: stream }).on('line', (line) => out.write(`[${name}] ${line}\n`));
  }
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ name, code: code ?? (signal ? 1 : 0) })));
}

// The second starts once the first has had time to start its control plane: two setups at once
// on 2 cores can starve the local endpoint past its probe's timeout.
const B_START_DELAY_MS = 45_000;
const results = await Promise.all(runs.map((r, i) => (i === 0 ? run(r) : new Promise((resolve) => setTimeout(resolve, B_START_DELAY_MS)).then(() => run(r)))));
for (const r of results) process.stdout.write(`[${r.name}] vitest exited ${r.code}\n`);
process.exit(results.some((r) => r.code !== 0) ? 1 : 0);
