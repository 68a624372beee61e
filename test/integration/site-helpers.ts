/**
 * Runs test/integration/site-process.ts as a child process (a control plane of its own) and
 * keeps its output, so a test can read what its worker logged (one JSON line per job).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('./site-process.ts', import.meta.url));

export interface Site {
  apiUrl: string;
  child: ChildProcess;
  /** Every line it printed so far. */
  lines: string[];
  /** The JSON lines its worker logged whose `msg` is `msg`. */
  logged(msg: string): Array<Record<string, unknown>>;
  /** SIGTERM, and wait for the exit. */
  stop(): Promise<void>;
}

export async function startSite(env: Record<string, string>, timeoutMs = 120_000): Promise<Site> {
  const child = spawn(process.execPath, ['--import', 'tsx', SCRIPT], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let partial = '';
  const onData = (chunk: Buffer) => {
    const text = partial + chunk.toString('utf8');
    const parts = text.split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = lines.find((l) => l.startsWith('SITE '));
    if (line) {
      const { apiUrl } = JSON.parse(line.slice('SITE '.length)) as { apiUrl: string };
      return {
        apiUrl,
        child,
        lines,
        logged: (msg) =>
          lines.flatMap((l) => {
            if (!l.startsWith('{')) return [];
            try {
              const parsed = JSON.parse(l) as Record<string, unknown>;
              return parsed.msg === msg ? [parsed] : [];
            } catch {
              return [];
            }
          }),
        stop: async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
          await exited;
        },
      };
    }
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the site process did not start:\n${lines.slice(-30).join('\n')}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export interface Plug {
  /** Where to connect instead of the target. */
  url: string;
  /** Closes the port and cuts every open connection: connecting is refused until `plug`. */
  unplug(): Promise<void>;
  /** Listens on the same port again. */
  plug(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A TCP relay in front of an endpoint (the vault's), so a test can make the endpoint unreachable
 * (the port refuses connections, as a stopped process's does) and reachable again with its state
 * intact: nothing in the requests is looked at or changed.
 */
export async function startPlug(targetUrl: string): Promise<Plug> {
  const target = new URL(targetUrl);
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = connect(Number(target.port), target.hostname);
        for (const sock of [client, upstream]) sockets.add(sock);
        const close = () => {
          for (const sock of [client, upstream]) {
            sock.destroy();
            sockets.delete(sock);
          }
        };
        client.pipe(upstream).pipe(client);
        for (const sock of [client, upstream]) sock.on('error', close).on('close', close);
      });
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        port = (s.address() as AddressInfo).port;
        server = s;
        resolve();
      });
    });
  const unplug = async () => {
    const s = server;
    server = undefined;
    if (!s) return;
    const closed = new Promise<void>((resolve) => s.close(() => resolve()));
    for (const sock of sockets) sock.destroy();
    sockets.clear();
    await closed;
  };
  await listen();
  return { url: `http://127.0.0.1:${port}`, unplug, plug: listen, close: unplug };
}
