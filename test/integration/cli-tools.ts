/**
 * Helpers for the CLI tests: run the real CLI (`node bin/sledge.js ...`) as a user who has not
 * asked for stacks, and check how it refuses command lines.
 */
// First: it points this process's credential chain at the local principals, which TOOLS_ENV copies.
import './helpers.ts';
import { expect } from 'vitest';
import { describeRun, run, type RunResult, SLEDGE_BIN, TOOLS_ENV } from './nbd-tools.ts';

/** The environment of a user who has not asked for stacks, whatever this test process has. */
export const PLAIN_ENV: NodeJS.ProcessEnv = { ...TOOLS_ENV };
delete PLAIN_ENV.SLEDGE_DEBUG;

/** Runs the real CLI (`node bin/sledge.js <args>`) as such a user, or with `env`. */
export function sledge(args: string[], env: NodeJS.ProcessEnv = PLAIN_ENV): Promise<RunResult> {
  return run(process.execPath, [SLEDGE_BIN, ...args], { env });
}

/** A command line the CLI refuses after asking the API: exit 1, nothing on stdout, and exactly `stderr`. */
export interface CliErrorCase {
  args: string[];
  stderr: string;
}

/** A wrong command line: exit 2, nothing on stdout, `sledge: <line>`, a blank line and the usage (starting with `usage`) on stderr. */
export interface CliUsageCase {
  args: string[];
  line: string;
  usage: string;
}

/**
 * Runs each case's arguments through `sledge` two at a time (each is a Node process loading the
 * CLI through tsx, on a 2-core machine), and checks each result.
 */
async function eachTwoAtATime<C extends { args: string[] }>(cases: C[], sledge: (args: string[]) => Promise<RunResult>, check: (c: C, r: RunResult) => void): Promise<void> {
  for (let i = 0; i < cases.length; i += 2) {
    const batch = cases.slice(i, i + 2);
    const results = await Promise.all(batch.map((c) => sledge(c.args)));
    for (const [j, r] of results.entries()) check(batch[j]!, r);
  }
}

/** Expects each command line refused as its case says (CliErrorCase). */
export function expectCliErrors(sledge: (args: string[]) => Promise<RunResult>, cases: CliErrorCase[]): Promise<void> {
  return eachTwoAtATime(cases, sledge, (c, r) => {
    expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }, c.args.join(' ')).toEqual({ code: 1, stdout: '', stderr: c.stderr });
  });
}

/** Expects each command line refused before sending anything, with the command's usage (CliUsageCase). */
export function expectUsageErrors(sledge: (args: string[]) => Promise<RunResult>, cases: CliUsageCase[]): Promise<void> {
  return eachTwoAtATime(cases, sledge, (c, r) => {
    expect(r.code, describeRun(`sledge ${c.args.join(' ')}`, r)).toBe(2);
    expect(r.stdout).toBe('');
    const [first, blank, usage] = r.stderr.split('\n');
    expect(first!.startsWith(`sledge: ${c.line}`), r.stderr).toBe(true);
    expect(blank).toBe('');
    expect(usage!.startsWith(c.usage), r.stderr).toBe(true);
  });
}
