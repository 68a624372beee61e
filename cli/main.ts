/**
 * The `sledge` command line (bin/sledge.js loads this file).
 *
 *   sledge nbd <volumeId> --api <url> [--port N | --socket PATH] [options]
 *
 * Argument parsing only; the gateway itself lives in gateway/.
 */
import { existsSync, statSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { WriteBackCache } from '#gateway/cache.ts';
import { startNbdServer } from '#gateway/server.ts';
import { VolumeApiError, VolumeClient, type VolumeDescription } from '#gateway/volume-client.ts';

const MiB = 1024 * 1024;
const DEFAULT_NBD_PORT = 10809;

export const USAGE = `usage: sledge <command> [options]

commands:
  nbd <volumeId> --api <url> [--port N | --socket PATH]
      Serve a volume as a block device over NBD, with a volatile write cache that is made
      durable on FLUSH, FUA, every segment's worth of writes, old dirty data and shutdown.

      --api URL              the Sledge volume API (e.g. http://127.0.0.1:3000)
      --port N               TCP port (default ${DEFAULT_NBD_PORT}; 0 picks a free one)
      --host ADDR            TCP address to listen on (default 127.0.0.1)
      --socket PATH          listen on a Unix socket instead of TCP
      --cache-mib N          dirty data held before clients are slowed down (default 64)
      --segment-mib N        dirty data that starts a write-back (default 4, at most 4 per batch)
      --max-dirty-age-ms N   write back dirty data older than this (default 5000; 0 = only on
                             FLUSH, FUA, full segments and shutdown)
      --key KEY              reservation key to attach with (default gw-<host>-<random>); the
                             gateway takes a write-exclusive reservation, preempting any holder

  rebuild <volumeId> --api <url> [--queue]
      Rebuild the volume's page map from its latest checkpoint plus the segments committed
      after it (docs/checkpoints.md); --queue hands it to the worker.

  drives --api <url>         list the drives: state, usage, write errors, evacuation
  retire <sled>/<drive> --api <url> [--watch]
      Mark a drive retiring and queue its evacuation; --watch shows a progress bar until empty.
  evacuation <sled>/<drive> --api <url>
      Follow a drive's evacuation with a progress bar (chunks, bytes, rate, ETA).

  help                       this text

Attach with e.g.  nbdinfo nbd://127.0.0.1:10809   or   qemu-io -f raw nbd://127.0.0.1:10809
`;

/** The command line is wrong; the message says how. Exit status 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

function checkKeyOption(key: string): string {
  if (!/^[A-Za-z0-9._:-]{1,64}$/.test(key)) throw new UsageError(`--key must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, got ${JSON.stringify(key)}`);
  return key;
}

function intOption(value: string | undefined, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
  return n;
}

export interface NbdCommand {
  volumeId: string;
  apiUrl: string;
  listen: { host: string; port: number } | { socketPath: string };
  cacheBytes: number;
  segmentBytes: number;
  maxDirtyAgeMs: number;
  /** The reservation key to attach with; a fresh one per process by default. */
  reservationKey?: string;
}

/** Parses `nbd` arguments (everything after the word `nbd`). Throws UsageError. */
export function parseNbdArgs(args: string[]): NbdCommand {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        api: { type: 'string' },
        port: { type: 'string' },
        host: { type: 'string' },
        socket: { type: 'string' },
        'cache-mib': { type: 'string' },
        'segment-mib': { type: 'string' },
        'max-dirty-age-ms': { type: 'string' },
        key: { type: 'string' },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new UsageError(`sledge nbd takes exactly one volume id, got ${positionals.length === 0 ? 'none' : positionals.join(' ')}`);
  const volumeId = positionals[0]!;
  if (!values.api) throw new UsageError('--api <url> is required: the Sledge API that serves the volume, e.g. --api http://127.0.0.1:3000');
  let apiUrl: URL;
  try {
    apiUrl = new URL(values.api);
  } catch {
    throw new UsageError(`--api ${JSON.stringify(values.api)} is not a URL; give e.g. http://127.0.0.1:3000`);
  }
  if (apiUrl.protocol !== 'http:' && apiUrl.protocol !== 'https:') throw new UsageError(`--api must be an http or https URL, got ${apiUrl.protocol}`);
  if (values.socket !== undefined && (values.port !== undefined || values.host !== undefined)) throw new UsageError('give either --socket or --port/--host, not both');
  if (values.socket === '') throw new UsageError('--socket needs a path');
  const cacheMiB = intOption(values['cache-mib'], 'cache-mib', 4, 64 * 1024, 64);
  const segmentMiB = intOption(values['segment-mib'], 'segment-mib', 1, 4, 4);
  if (segmentMiB > cacheMiB) throw new UsageError(`--segment-mib ${segmentMiB} is larger than --cache-mib ${cacheMiB}`);
  return {
    volumeId,
    apiUrl: values.api,
    listen: values.socket !== undefined ? { socketPath: values.socket } : { host: values.host ?? '127.0.0.1', port: intOption(values.port, 'port', 0, 65535, DEFAULT_NBD_PORT) },
    cacheBytes: cacheMiB * MiB,
    segmentBytes: segmentMiB * MiB,
    maxDirtyAgeMs: intOption(values['max-dirty-age-ms'], 'max-dirty-age-ms', 0, 24 * 3600 * 1000, 5000),
    ...(values.key !== undefined ? { reservationKey: checkKeyOption(values.key) } : {}),
  };
}

/**
 * Runs when the gateway attaches to a volume, before it serves a single request: registers
 * the gateway's reservation key and takes a write-exclusive reservation, preempting whoever
 * held it (docs/reservations.md). So a second gateway attaching to the same volume fences the
 * first: the first's write-backs are refused by the commit condition, and its FLUSHes fail
 * with EIO instead of silently losing to the newcomer. Every request then presents the key.
 */
export async function onAttach(client: VolumeClient, key: string): Promise<string | null> {
  let state = await client.reserve({ action: 'register', key });
  const holder = state.reservation?.holder;
  if (holder === undefined) state = await client.reserve({ action: 'reserve', key, type: 'write-exclusive' });
  else if (holder !== key) {
    state = await client.reserve({ action: 'preempt', key, victimKey: holder, type: 'write-exclusive' });
  }
  client.reservationKey = key;
  return holder !== undefined && holder !== key ? holder : null;
}

/** On a clean stop, after the final write-back: give the volume back (unregister releases). */
async function onDetach(client: VolumeClient): Promise<void> {
  if (!client.reservationKey) return;
  try {
    await client.reserve({ action: 'unregister', key: client.reservationKey });
  } catch (err) {
    log(`could not unregister key ${client.reservationKey}: ${(err as Error).message}`);
  }
}

/** True when `path` is a Unix socket that refuses connections (its server is gone). */
async function isStaleSocket(path: string): Promise<boolean> {
  if (!statSync(path).isSocket()) return false;
  return new Promise((resolve) => {
    const probe = net.createConnection({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(false);
    });
    probe.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

function log(message: string): void {
  process.stderr.write(`sledge nbd: ${message}\n`);
}

async function runNbd(cmd: NbdCommand): Promise<number> {
  const client = new VolumeClient(cmd.apiUrl, cmd.volumeId);
  let volume: VolumeDescription;
  try {
    volume = await client.describe();
  } catch (err) {
    if (err instanceof VolumeApiError && err.status === 404) log(`volume ${cmd.volumeId} does not exist at ${cmd.apiUrl}`);
    else log(`cannot describe volume ${cmd.volumeId} at ${cmd.apiUrl}: ${(err as Error).message}`);
    return 1;
  }
  if (volume.state !== 'active') {
    log(`volume ${cmd.volumeId} is ${volume.state}, not active`);
    return 1;
  }
  if ('socketPath' in cmd.listen && existsSync(cmd.listen.socketPath)) {
    // Left behind by a gateway that was killed? Only a socket nobody answers on is removed.
    if (!(await isStaleSocket(cmd.listen.socketPath))) {
      log(`${cmd.listen.socketPath} exists and is not a stale socket; remove it or choose another --socket path`);
      return 1;
    }
    unlinkSync(cmd.listen.socketPath);
  }
  const key = cmd.reservationKey ?? `gw-${hostname().replace(/[^A-Za-z0-9._:-]/g, '-').slice(0, 40)}-${randomBytes(4).toString('hex')}`;
  try {
    const preempted = await onAttach(client, key);
    log(`attached with reservation key ${key}${preempted ? `, preempting ${preempted}` : ''}`);
  } catch (err) {
    log(`cannot attach to volume ${cmd.volumeId}: ${(err as Error).message}`);
    return 1;
  }
  const cache = new WriteBackCache(client, {
    sizeBytes: volume.sizeBytes,
    blockSizeBytes: volume.blockSizeBytes,
    pageBytes: volume.pageBlocks * volume.blockSizeBytes,
    segmentBytes: cmd.segmentBytes,
    capacityBytes: cmd.cacheBytes,
    maxDirtyAgeMs: cmd.maxDirtyAgeMs,
    log,
  });
  let server;
  try {
    server = await startNbdServer({
      exportName: volume.volumeId,
      description: `Sledge volume ${volume.volumeId}, ${volume.sizeBytes} bytes, ${volume.blockSizeBytes}-byte blocks`,
      cache,
      listen: cmd.listen,
      log,
    });
  } catch (err) {
    log(`cannot listen: ${(err as Error).message}`);
    return 1;
  }
  // Tests and scripts wait for this line; it carries the URI clients connect to.
  process.stdout.write(`sledge nbd: serving ${volume.volumeId} (${volume.sizeBytes} bytes, ${volume.blockSizeBytes}-byte blocks) at ${server.uri}\n`);

  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  log(`${signal}: closing connections and writing back ${cache.dirtyDataBytes} dirty bytes (a second signal quits at once and loses them)`);
  const quit = () => {
    log(`second signal: quitting with ${cache.dirtyDataBytes} dirty bytes not written back`);
    process.exit(130);
  };
  process.once('SIGINT', quit);
  process.once('SIGTERM', quit);
  let status = 0;
  await server.close();
  try {
    await cache.close();
    const s = cache.stats;
    log(`stopped; ${s.batchesWritten} batches written back (${s.dataBytesWritten} data bytes, ${s.zeroBytesWritten} zeroed bytes), ${s.flushes} flushes, ${s.readModifyWrites} read-modify-writes`);
  } catch (err) {
    log(`stopped WITH DATA LOSS: ${(err as Error).message}`);
    status = 1;
  }
  if (status === 0) await onDetach(client);
  if ('socketPath' in cmd.listen) {
    try {
      unlinkSync(cmd.listen.socketPath);
    } catch {
      // Already gone.
    }
  }
  return status;
}

/** Runs the CLI; returns the process exit status. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    }
    if (command === 'nbd') return await runNbd(parseNbdArgs(rest));
    if (command === 'rebuild' || command === 'drives' || command === 'retire' || command === 'evacuation') return await runAdmin(command, rest);
    throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`sledge: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    throw err;
  }
}

/** The operator commands: one positional at most, `--api`, and a flag or two. */
async function runAdmin(command: 'rebuild' | 'drives' | 'retire' | 'evacuation', args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args, allowPositionals: true, strict: true, options: { api: { type: 'string' }, queue: { type: 'boolean' }, watch: { type: 'boolean' } } });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (!values.api) throw new UsageError(`--api <url> is required for ${command}`);
  const wanted = command === 'drives' ? 0 : 1;
  if (positionals.length !== wanted) throw new UsageError(`sledge ${command} takes ${wanted === 0 ? 'no arguments' : 'exactly one argument'}, got ${positionals.length}`);
  const target = positionals[0]!;
  switch (command) {
    case 'rebuild': {
      const { rebuildVolume, formatRebuildReport } = await import('./rebuild.ts');
      const out = await rebuildVolume(values.api, target, { queue: values.queue === true });
      process.stdout.write('queued' in out ? `rebuild of ${target} queued for the worker\n` : `${formatRebuildReport(out)}\n`);
      return 0;
    }
    case 'drives':
      return (await import('./drives.ts')).listDrivesCommand(values.api, process.stdout);
    case 'retire':
      return (await import('./drives.ts')).retireDriveCommand(values.api, target, process.stdout, { watch: values.watch === true });
    case 'evacuation':
      return (await import('./drives.ts')).watchEvacuation(values.api, target, process.stdout);
  }
}
