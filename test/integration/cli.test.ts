import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { http, testApi } from './helpers.ts';
import { PLAIN_ENV, sledge } from './cli-tools.ts';
import { describeRun } from './nbd-tools.ts';

const { api, apiUrl: url } = testApi({ sledgeEnv: true });


/** A Node stack frame, as printed in an uncaught error or by util.inspect. */
const STACK_FRAME = /^\s+at .+[:)]/m;

/** A TCP port on 127.0.0.1 that nothing listens on: one the kernel just handed out and took back. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('sledge operator commands', () => {
  it('lists drives, rebuilds a page map, and explains usage errors', async () => {
    const drives = await sledge(['drives', '--api', url]);
    expect(drives.code, describeRun('sledge drives', drives)).toBe(0);
    expect(drives.stdout).toMatch(/d00/);

    const vol = await api.createVolume({ sizeBytes: 4 * 1024 * 1024 });
    const data = randomBytes(8192);
    await api.write(vol.volumeId, 0, data);
    const rebuilt = await sledge(['rebuild', vol.volumeId, '--api', url]);
    expect(rebuilt.code, describeRun('sledge rebuild', rebuilt)).toBe(0);
    expect((await api.read(vol.volumeId, 0, 8192)).equals(data)).toBe(true);

    const usage = await sledge(['rebuild', vol.volumeId]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/--api <url> is required for rebuild/);
  });

  it('prints every command\'s usage for --help, -h and help <command>, and exits 0', async () => {
    const forms = [
      ...['nbd', 'rebuild', 'drives', 'retire', 'evacuation', 'snapshot', 'clone', 'help'].map((command) => ({ args: [command, '--help'], starts: command === 'help' ? 'usage: sledge <command>' : `usage: sledge ${command} ` })),
      { args: ['drives', '-h'], starts: 'usage: sledge drives ' },
      { args: ['help', 'retire'], starts: 'usage: sledge retire ' },
    ];
    // Two at a time: each is a Node process loading the CLI through tsx, on a 2-core machine.
    for (let i = 0; i < forms.length; i += 2) {
      const batch = forms.slice(i, i + 2);
      const results = await Promise.all(batch.map((f) => sledge(f.args)));
      for (const [j, r] of results.entries()) {
        const { args, starts } = batch[j]!;
        expect(r.code, describeRun(`sledge ${args.join(' ')}`, r)).toBe(0);
        expect(r.stderr).toBe('');
        expect(r.stdout.startsWith(starts), r.stdout).toBe(true);
      }
    }
    // Help wins over other arguments, even ones that would be wrong.
    const withArgs = await sledge(['rebuild', 'vol-x', '--help', '--no-such-flag']);
    expect(withArgs.code, describeRun('sledge rebuild vol-x --help --no-such-flag', withArgs)).toBe(0);
    expect(withArgs.stdout).toMatch(/^usage: sledge rebuild <volumeId> --api <url> \[--queue\]/);
  });

  it('reports an error answer of the API in one line, without a stack, and exits 1', async () => {
    const r = await sledge(['rebuild', 'vol-nonexistent', '--api', url]);
    expect({ code: r.code, stderr: r.stderr, stdout: r.stdout }).toEqual({ code: 1, stderr: 'sledge: volume vol-nonexistent does not exist (404)\n', stdout: '' });

    const drive = await sledge(['evacuation', 'no-such-sled/d00', '--api', url]);
    expect(drive.code, describeRun('sledge evacuation', drive)).toBe(1);
    expect(drive.stderr).toBe('sledge: drive no-such-sled/d00 is not in the registry; GET /drives lists them as <sled>/<drive> (404)\n');
  });

  it('reports an unreachable API in one line naming the cause, with the stack only under SLEDGE_DEBUG=1', async () => {
    const port = await closedPort();
    const refused = `http://127.0.0.1:${port}`;
    for (const args of [['rebuild', 'vol-nonexistent', '--api', refused], ['drives', '--api', refused], ['retire', 's/d00', '--api', refused], ['evacuation', 's/d00', '--api', refused]]) {
      const r = await sledge(args);
      expect({ code: r.code, stderr: r.stderr }, args.join(' ')).toEqual({ code: 1, stderr: `sledge: cannot reach the API at ${refused}: connection refused; is npm start running?\n` });
    }
    // fetch never connects to the ports the Fetch standard blocks (9 among them); say so rather than blame the API.
    const blocked = await sledge(['rebuild', 'vol-nonexistent', '--api', 'http://127.0.0.1:9']);
    expect({ code: blocked.code, stderr: blocked.stderr }).toEqual({
      code: 1,
      stderr: 'sledge: cannot reach the API at http://127.0.0.1:9: fetch refuses to connect to port 9 (the Fetch standard blocks it, so nothing was sent); serve the API on another port\n',
    });
    // The gateway retries before giving up, and then says the same.
    const nbd = await sledge(['nbd', 'vol-nonexistent', '--api', refused, '--port', '0']);
    expect(nbd.code, describeRun('sledge nbd', nbd)).toBe(1);
    expect(nbd.stderr).toBe(`sledge nbd: cannot reach the API at ${refused}: connection refused; is npm start running?\n`);
    for (const r of [blocked, nbd]) expect(r.stderr).not.toMatch(STACK_FRAME);

    const debug = await sledge(['drives', '--api', refused], { ...PLAIN_ENV, SLEDGE_DEBUG: '1' });
    expect(debug.code).toBe(1);
    expect(debug.stderr.split('\n')[0]).toBe(`sledge: cannot reach the API at ${refused}: connection refused; is npm start running?`);
    expect(debug.stderr).toMatch(STACK_FRAME);
    expect(debug.stderr).toContain('ECONNREFUSED');
  });

  it('lists each drive with the columns its usage line promises: state, write errors and evacuation', async () => {
    const help = await sledge(['drives', '--help']);
    expect(help.stdout).toContain('List the drives: state, write errors, and evacuation progress where there is one.');
    const listed = await sledge(['drives', '--api', url]);
    expect(listed.code, describeRun('sledge drives', listed)).toBe(0);
    const registry = (await http(`${url}/drives`)).json.drives as Array<{ driveId: string; state: string; writeErrors?: number; evacuation?: unknown }>;
    const lines = listed.stdout.trimEnd().split('\n');
    expect(lines.length).toBe(registry.length);
    for (const [i, d] of registry.entries()) {
      const line = lines[i]!;
      expect(line.split(/\s+/).slice(0, 4), line).toEqual([d.driveId, d.state, 'errors', String(d.writeErrors ?? 0)]);
      // A progress bar exactly where the registry has an evacuation.
      expect(line.includes('['), line).toBe(d.evacuation !== undefined);
    }
  });
});
