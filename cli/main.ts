/**
 * The `sledge` command line (bin/sledge.js loads this file).
 *
 *   sledge nbd <volumeId> --api <url> [--port N | --socket PATH] [options]
 *   sledge snapshot create|list|delete ..., sledge clone <snapshotId> ... (cli/snapshots.ts)
 *   sledge rollback <volumeId> --snapshot <snapshotId> ..., sledge flatten <volumeId> ... (cli/flatten.ts)
 *   sledge group create|show|add|remove|delete|snapshot|snapshots|delete-snapshot ... (cli/groups.ts)
 *
 * Argument parsing only; the gateway itself lives in gateway/, the other commands in this folder.
 */
import { existsSync, statSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { WriteBackCache } from '#gateway/cache.ts';
import { startNbdServer } from '#gateway/server.ts';
import { API_FOLDING_PAGES_PER_BATCH, VolumeApiError, VolumeClient, type VolumeDescription } from '#gateway/volume-client.ts';
import { PretouchedMemory } from '#gateway/pretouched.ts';
import { hostMemory, hugePagesAdvice } from './huge-pages.ts';
import { NbdReader, onAttach, onDetach } from './nbd-attach.ts';
import { debugEnabled, formatCliError, parseArgsUsageError, unreachable, UsageError } from './errors.ts';
import { SIGNING_OPTIONS, defaultSigner, signingFromValues, type SigningOptions } from './signing.ts';

/** The command line is wrong; the message says how. Exit status 2. */
export { UsageError };

const MiB = 1024 * 1024;
const DEFAULT_NBD_PORT = 10809;

/**
 * Each command's usage, in the order `sledge help` lists them. `sledge <command> --help` prints
 * just that command's entry; `sledge help` prints them all.
 */
export const COMMAND_USAGE = {
  nbd: `  nbd <volumeId> --api <url> [--port N | --socket PATH]
  nbd --snapshot <snapshotId> --api <url> [--port N | --socket PATH]
      Serve a volume as a block device over NBD, with a volatile write cache that is made
      durable on FLUSH, FUA, every segment's worth of writes, old dirty data and shutdown.
      With --snapshot, serve a snapshot read-only (READ_ONLY advertised; writes get EPERM).
      With --reader, serve the volume read-only beside the gateway that writes it, with a
      clean cache guarded by a read lease (docs/nbd-gateway.md, "Multi-attach"): no read
      returns data older than a write the writer made durable before the read was issued.

      --api URL              the Sledge volume API (e.g. http://127.0.0.1:3000)
      --port N               TCP port (default ${DEFAULT_NBD_PORT}; 0 picks a free one)
      --host ADDR            TCP address to listen on (default 127.0.0.1)
      --socket PATH          listen on a Unix socket instead of TCP
      --cache-mib N          dirty data held before clients are slowed down (default 64)
      --read-cache-mib N     clean data kept for reads, least recently used out (default 256;
                             0 = none, and no read-ahead)
      --pretouch-mib N       memory a worker thread touches ahead of large reads, so that their
                             page faults are not paid on the serving thread (default 64; 0 = none)
      --segment-mib N        dirty data that starts a write-back (default 4, at most 4 per batch)
      --max-dirty-age-ms N   write back dirty data older than this (default 5000; 0 = only on
                             FLUSH, FUA, full segments and shutdown)
      --key KEY              reservation key to attach with (default gw-<host>-<random>); the
                             gateway takes a write-exclusive reservation, preempting any holder
      --reader               attach as a reader: register the key, take no reservation, hold a
                             read lease on the cache instead; SIGUSR1 promotes it to the writer
                             (it preempts the reservation's holder: for a writer that died);
                             SIGUSR2 prints what it did so far (requests, cache, GETs)
      --lease-s N            a reader's lease term (default 6, 1 to 15): a stopped reader delays
                             the writer's next write by at most this much
      --retry-budget-s N     how long a read or write-back keeps retrying an unreachable or
                             failing API before the client gets EIO (default 120, like iSCSI's
                             replacement timeout; 0 = one attempt)
      --no-direct-reads      read every byte through the API instead of fetching data chunks
                             with the head's read plans (docs/nbd-gateway.md)
      --direct-writes        encode write-backs here and upload their chunks with the head's
                             write plans, the head committing them by reference (off by default:
                             not faster on the local endpoint yet; docs/nbd-gateway.md)

      Attach with e.g.  nbdinfo nbd://127.0.0.1:10809   or   qemu-io -f raw nbd://127.0.0.1:10809
`,
  rebuild: `  rebuild <volumeId> --api <url> [--queue]
      Rebuild the volume's page map from its latest checkpoint plus the segments committed
      after it (docs/checkpoints.md); --queue hands it to the worker.
`,
  drives: `  drives --api <url>
      List the drives: state, write errors, and evacuation progress where there is one.
`,
  retire: `  retire <sled>/<drive> --api <url> [--watch]
      Mark a drive retiring and queue its evacuation; --watch shows a progress bar until empty.
`,
  reactivate: `  reactivate <sled>/<drive> --api <url>
      Put a drive back in service: active, its error counts cleared; a running evacuation stops
      (chunks it moved stay moved).
`,
  evacuation: `  evacuation <sled>/<drive> --api <url>
      Follow a drive's evacuation with a progress bar (chunks, bytes, rate, ETA).
`,
  snapshot: `  snapshot create <volumeId> --api <url> [--name N] [--key KEY]
  snapshot list <volumeId> --api <url>
  snapshot delete <snapshotId> --api <url>
      Take a snapshot of a volume: every write acknowledged before it is in it, none started
      after it is (writes a \`sledge nbd\` gateway still holds in its cache are not, until a
      FLUSH); nothing is copied. List a volume's snapshots, one line each: id, commit, size,
      created, name, clones. Delete one: refused while clones read through it.

      --name N               a name for the snapshot (1 to 128 characters)
      --key KEY              the reservation key to act under when the volume is reserved
                             (e.g. the one \`sledge nbd\` printed when it attached)
`,
  clone: `  clone <snapshotId> --api <url> [--size BYTES] [--name N]
      Create a volume that reads as the snapshot, at once, with nothing copied; writes to the
      clone never touch the snapshot's volume. Prints the new volume's id and size.

      --size BYTES           the clone's size: the snapshot's by default, never smaller; bytes,
                             or a whole number of KiB, MiB, GiB or TiB (e.g. 2TiB)
      --name N               a name for the volume (1 to 128 characters)
`,
  rollback: `  rollback <volumeId> --snapshot <snapshotId> --api <url> [--key KEY]
      Make the volume read as one of its own snapshots again, in one commit (at most 96 pages
      changed since the snapshot; for more, clone the snapshot instead). Snapshots taken after
      it keep reading as they did. Prints the pages restored and the commit.

      --snapshot ID          the snapshot of this volume to roll back to (required)
      --key KEY              the reservation key to act under when the volume is reserved
                             (e.g. the one \`sledge nbd\` printed when it attached)
`,
  flatten: `  flatten <volumeId> --api <url>
      Copy into a clone every block it still reads from its parent, so that it stands alone
      (and its parent snapshot can be deleted). The worker does the copying; this shows a
      progress bar (pages, bytes copied, rate, ETA) until the clone has no parent, then exits 0.
      Writes to the clone go on meanwhile and are never overwritten by the copy.
`,
  backup: `  backup <volumeId> --snapshot <snapshotId> --api <url>
      Back up one of the volume's snapshots to the vault (docs/backup.md): only the blocks
      changed since the newest backup on its snapshot chain are shipped. Shows a progress bar
      (bytes shipped of bytes to ship, rate, ETA) until the backup is complete, then exits 0.
`,
  restore: `  restore <backupId> --api <url> [--size SIZE]
      Restore a backup into a new volume (a clone's backup becomes a clone of its parent's
      restore). Shows a progress bar until the restore is complete and prints the volume id.

      --size BYTES           the new volume's size: the backup's by default, never smaller
`,
  group: `  group create <name> <volumeId>... --api <url>
  group show|delete <groupId> --api <url>
  group add|remove <groupId> <volumeId>... --api <url>
  group snapshot <groupId> --api <url> [--key <volumeId>=<key>]...
  group snapshots <groupId> --api <url>
  group delete-snapshot <groupId> <groupSnapshotId> --api <url>
  group backup <groupId> <groupSnapshotId> --api <url>
  group restore <groupBackupId> --api <url> [--name <groupName>]
      Consistency groups: volumes of one owner whose snapshots are taken together, at one
      point in time (a write acknowledged before another was issued is in every group snapshot
      that holds the other). A volume is in at most one group. \`group snapshot\` prints the
      group snapshot and each member's snapshot (an ordinary snapshot); \`delete-snapshot\`
      deletes them all. \`group backup\` backs a group snapshot up to the vault as one backup
      per member; \`group restore\` restores such a group backup into new volumes (and, with
      --name, a new group of them); both show a progress bar until done.

      --key VOL=KEY          the reservation key to present on member VOL (e.g. the one its
                             \`sledge nbd\` printed); repeat for each reserved member
`,
  help: `  help [<command>]
      This text, or one command's. \`sledge <command> --help\` does the same.
`,
} as const;

export type CommandName = keyof typeof COMMAND_USAGE;

const isCommand = (word: string | undefined): word is CommandName => word !== undefined && Object.hasOwn(COMMAND_USAGE, word);

/** The options every command that talks to the API takes (see `SIGNING_USAGE`). */
const SIGNING_USAGE = `Every command signs its requests to the API (AWS SigV4, service execute-api) with the
standard AWS credential chain, as the AWS CLI does:
  --profile NAME     a profile of the shared credentials/config files (default AWS_PROFILE)
  --region REGION    the region to sign for (default: the API URL's, AWS_REGION, us-east-1)
  --unsigned         send requests unsigned (a stack deployed without IAM authorization)
Otherwise AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, SSO, or an instance or container role.
Locally: export AWS_SHARED_CREDENTIALS_FILE=.sledge/credentials (written by npm start), then
--profile sledge-operator, sledge-tenant-a or sledge-tenant-b.
`;

export const USAGE = `usage: sledge <command> [options]

commands:
${Object.values(COMMAND_USAGE).join('\n')}
${SIGNING_USAGE}
Errors are one line on stderr; set SLEDGE_DEBUG=1 to see stacks as well.
`;

/** One command's usage, for `sledge <command> --help`. */
export function commandUsage(command: CommandName): string {
  return `usage: sledge ${COMMAND_USAGE[command].trimStart()}${command === 'help' ? '' : `\n${SIGNING_USAGE}`}`;
}

function checkKeyOption(key: string): string {
  if (!/^[A-Za-z0-9._:-]{1,64}$/.test(key)) throw new UsageError(`--key must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, got ${JSON.stringify(key)}`);
  return key;
}

/** Checks an `--api` value: an http or https URL. Throws UsageError. */
function checkApiUrl(value: string): void {
  let apiUrl: URL;
  try {
    apiUrl = new URL(value);
  } catch {
    throw new UsageError(`--api ${JSON.stringify(value)} is not a URL; give e.g. http://127.0.0.1:3000`);
  }
  if (apiUrl.protocol !== 'http:' && apiUrl.protocol !== 'https:') throw new UsageError(`--api must be an http or https URL, got ${apiUrl.protocol}`);
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
  readCacheBytes: number;
  /** Memory a worker thread touches ahead of large reads (gateway/pretouched.ts). */
  pretouchBytes: number;
  segmentBytes: number;
  maxDirtyAgeMs: number;
  /** How long API requests are retried while serving (VolumeClient's retry budget). */
  retryBudgetMs: number;
  /** The reservation key to attach with; a fresh one per process by default. */
  reservationKey?: string;
  /** Serve this snapshot of the volume, read-only, instead of the volume. */
  snapshotId?: string;
  /** Attach as a reader under a read lease of this term (multi-attach), instead of as the writer. */
  readerLeaseMs?: number;
  /** Read through the API only, never with read plans and direct chunk GETs. */
  noDirectReads?: boolean;
  /** Write back with write plans and direct chunk PUTs (docs/nbd-gateway.md, "Direct writes"). */
  directWrites?: boolean;
  /** How requests are signed (`--profile`, `--region`, `--unsigned`). */
  signing: SigningOptions;
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
        'read-cache-mib': { type: 'string' },
        'pretouch-mib': { type: 'string' },
        'segment-mib': { type: 'string' },
        'max-dirty-age-ms': { type: 'string' },
        key: { type: 'string' },
        ...SIGNING_OPTIONS,
        'retry-budget-s': { type: 'string' },
        snapshot: { type: 'string' },
        reader: { type: 'boolean' },
        'lease-s': { type: 'string' },
        'no-direct-reads': { type: 'boolean' },
        'direct-writes': { type: 'boolean' },
      },
    });
  } catch (err) {
    throw parseArgsUsageError(err);
  }
  const { values, positionals } = parsed;
  const snapshotId = values.snapshot;
  let volumeId: string;
  if (snapshotId !== undefined) {
    if (positionals.length !== 0) throw new UsageError(`sledge nbd --snapshot serves the snapshot alone; drop ${positionals.join(' ')}`);
    const m = /^snap-([0-9a-f]{16})-\d{12}-[0-9a-f]{6}$/.exec(snapshotId);
    if (!m) throw new UsageError(`--snapshot needs a snapshot id (snap-<16 hex>-<12 digits>-<6 hex>), got ${JSON.stringify(snapshotId)}`);
    if (values.key !== undefined) throw new UsageError('--key has no use with --snapshot: a snapshot export takes no reservation');
    volumeId = `vol-${m[1]}`;
  } else {
    if (positionals.length !== 1) throw new UsageError(`sledge nbd takes exactly one volume id, got ${positionals.length === 0 ? 'none' : positionals.join(' ')}`);
    volumeId = positionals[0]!;
  }
  if (!values.api) throw new UsageError('--api <url> is required: the Sledge API that serves the volume, e.g. --api http://127.0.0.1:3000');
  checkApiUrl(values.api);
  if (values.socket !== undefined && (values.port !== undefined || values.host !== undefined)) throw new UsageError('give either --socket or --port/--host, not both');
  if (values.socket === '') throw new UsageError('--socket needs a path');
  const cacheMiB = intOption(values['cache-mib'], 'cache-mib', 4, 64 * 1024, 64);
  const segmentMiB = intOption(values['segment-mib'], 'segment-mib', 1, 4, 4);
  if (values.reader && snapshotId !== undefined) throw new UsageError('--reader has no use with --snapshot: a snapshot never changes, so its cache needs no lease');
  if (values['lease-s'] !== undefined && !values.reader) throw new UsageError('--lease-s is the term of a reader\'s lease; give it with --reader');
  if (segmentMiB > cacheMiB) throw new UsageError(`--segment-mib ${segmentMiB} is larger than --cache-mib ${cacheMiB}`);
  return {
    volumeId,
    ...(snapshotId !== undefined ? { snapshotId } : {}),
    apiUrl: values.api,
    listen: values.socket !== undefined ? { socketPath: values.socket } : { host: values.host ?? '127.0.0.1', port: intOption(values.port, 'port', 0, 65535, DEFAULT_NBD_PORT) },
    cacheBytes: cacheMiB * MiB,
    readCacheBytes: intOption(values['read-cache-mib'], 'read-cache-mib', 0, 64 * 1024, 256) * MiB,
    pretouchBytes: intOption(values['pretouch-mib'], 'pretouch-mib', 0, 1024, 64) * MiB,
    segmentBytes: segmentMiB * MiB,
    maxDirtyAgeMs: intOption(values['max-dirty-age-ms'], 'max-dirty-age-ms', 0, 24 * 3600 * 1000, 5000),
    retryBudgetMs: intOption(values['retry-budget-s'], 'retry-budget-s', 0, 24 * 3600, 120) * 1000,
    ...(values.key !== undefined ? { reservationKey: checkKeyOption(values.key) } : {}),
    ...(values.reader ? { readerLeaseMs: intOption(values['lease-s'], 'lease-s', 1, 15, 6) * 1000 } : {}),
    ...(values['no-direct-reads'] ? { noDirectReads: true } : {}),
    ...(values['direct-writes'] ? { directWrites: true } : {}),
    signing: signingFromValues(values),
  };
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

/** Retry budget while starting: a wrong --api or a stopped API is reported in seconds, not minutes. */
const STARTUP_RETRY_BUDGET_MS = 3000;

async function runNbd(cmd: NbdCommand): Promise<number> {
  const advice = hugePagesAdvice(hostMemory());
  if (advice) log(advice);
  const client = new VolumeClient(cmd.apiUrl, cmd.volumeId, {
    retryBudgetMs: Math.min(cmd.retryBudgetMs, STARTUP_RETRY_BUDGET_MS),
    sign: await defaultSigner(cmd.apiUrl, cmd.signing),
    ...(cmd.snapshotId !== undefined ? { snapshotId: cmd.snapshotId } : {}),
    directReads: !cmd.noDirectReads,
    directWrites: cmd.directWrites === true,
    memory: new PretouchedMemory({ reserveBytes: cmd.pretouchBytes }),
    onFallback: log,
  });
  const what = cmd.snapshotId ?? cmd.volumeId;
  let volume: VolumeDescription;
  try {
    volume = await client.describe();
  } catch (err) {
    if (err instanceof VolumeApiError && err.status === 404) log(`${cmd.snapshotId ? 'snapshot' : 'volume'} ${what} does not exist at ${cmd.apiUrl}`);
    else if (err instanceof VolumeApiError && err.status === 403) log(`the API refused the request (403): ${err.message}; check --profile and the credentials it names`);
    // Status 0: no answer after every retry; say why in the words of the network, not fetch's.
    else if (err instanceof VolumeApiError && err.status === 0) log(unreachable(cmd.apiUrl, err).message);
    else log(`cannot describe volume ${cmd.volumeId} at ${cmd.apiUrl}: ${(err as Error).message}`);
    return 1;
  }
  if (volume.state !== (cmd.snapshotId ? 'ready' : 'active')) {
    log(`${cmd.snapshotId ? 'snapshot' : 'volume'} ${what} is ${volume.state}, not ${cmd.snapshotId ? 'ready' : 'active'}`);
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
  // A reader's lease renews on a client of its own with a short retry budget: a renewal that
  // needs longer is stale anyway (the lease is timed from when it was sent).
  const reader =
    cmd.readerLeaseMs === undefined
      ? undefined
      : new NbdReader(
          new VolumeClient(cmd.apiUrl, cmd.volumeId, { retryBudgetMs: cmd.readerLeaseMs / 3, requestTimeoutMs: cmd.readerLeaseMs, sign: await defaultSigner(cmd.apiUrl, cmd.signing) }),
          { invalidate: () => cache.invalidate() },
          { key, leaseMs: cmd.readerLeaseMs, log },
        );
  const cache = new WriteBackCache(client, {
    sizeBytes: volume.sizeBytes,
    blockSizeBytes: volume.blockSizeBytes,
    pageBytes: volume.pageBlocks * volume.blockSizeBytes,
    segmentBytes: cmd.segmentBytes,
    capacityBytes: cmd.cacheBytes,
    readCacheBytes: cmd.readCacheBytes,
    maxDirtyAgeMs: cmd.maxDirtyAgeMs,
    ...(volume.foldedSeq === undefined ? {} : { pagesPerBatch: API_FOLDING_PAGES_PER_BATCH }),
    ...(reader ? { coherence: reader } : {}),
    log,
  });
  // Large reads (direct, or through the API: read-ahead, a snapshot's) land in memory touched
  // ahead by a worker thread: fill its reserve now.
  if (client.directReads || cmd.readCacheBytes > 0) client.memory.prepare();
  // Listen first, attach after: a gateway that cannot listen (a port or socket in use) must
  // never take the volume's reservation from a gateway that is serving it. Connections that
  // arrive in between wait for the attach.
  let attached!: () => void;
  let attachFailed!: (err: Error) => void;
  const ready = new Promise<void>((resolve, reject) => {
    attached = resolve;
    attachFailed = reject;
  });
  ready.catch(() => undefined);
  // Kept: a reader promoted to the writer (NbdReader.promote) serves new connections read-write.
  const serverOptions: Parameters<typeof startNbdServer>[0] = {
    exportName: what,
    description: cmd.snapshotId
      ? `Sledge snapshot ${cmd.snapshotId} of ${volume.volumeId} (read-only), ${volume.sizeBytes} bytes, ${volume.blockSizeBytes}-byte blocks`
      : `Sledge volume ${volume.volumeId}, ${volume.sizeBytes} bytes, ${volume.blockSizeBytes}-byte blocks`,
    readOnly: cmd.snapshotId !== undefined || reader !== undefined,
    cache,
    listen: cmd.listen,
    ready,
    log,
  };
  let server;
  try {
    server = await startNbdServer(serverOptions);
  } catch (err) {
    log(`cannot listen: ${(err as Error).message}`);
    await cache.close().catch(() => undefined);
    return 1;
  }
  try {
    // A snapshot never changes: its export takes no reservation and writes nothing.
    if (reader) {
      await reader.attach(client);
      log(`attached as a reader with key ${key}, read lease ${cmd.readerLeaseMs} ms`);
    } else if (cmd.snapshotId === undefined) {
      const preempted = await onAttach(client, key);
      log(`attached with reservation key ${key}${preempted ? `, preempting ${preempted}` : ''}`);
    }
  } catch (err) {
    log(`cannot attach to volume ${cmd.volumeId}: ${(err as Error).message}`);
    attachFailed(err as Error);
    await server.close();
    await cache.close().catch(() => undefined);
    removeSocket(cmd.listen);
    return 1;
  }
  attached();
  client.retryBudgetMs = cmd.retryBudgetMs;
  // Several roots: a reader already serving the volume becomes its writer on SIGUSR1 (sent by
  // whoever decided the writer is gone), and clients of the dead writer reconnect to it.
  if (reader) process.on('SIGUSR1', () => void reader.promote(client, cache, serverOptions));
  // What the gateway did so far, without stopping it (the bench counts S3 GETs with it).
  const stats = () => {
    const s = cache.stats;
    return (
      `${s.batchesWritten} batches written back (${s.dataBytesWritten} data bytes, ${s.zeroBytesWritten} zeroed bytes), ${s.flushes} flushes, ${s.readModifyWrites} read-modify-writes; ` +
        `${s.apiReads} API reads (${s.apiReadBytes} bytes, ${s.readAheads} ahead, ${s.prefetches} for CACHE, ${client.rangedGets} S3 ranged GETs), ${client.sent.allocations} allocation queries, ` +
        `read cache ${cache.clean.stats.hits} hits, ${cache.clean.stats.misses} misses; ` +
        `direct reads: ${client.sent.plans} read plans, ${client.direct.reads} read directly, ${client.direct.gets} chunk GETs, ${client.direct.fallbacks} fallbacks, ${client.sent.reads} API data reads, ` +
        `${client.memory.stats.pretouchedBytes} bytes into pretouched memory, ${client.memory.stats.plainBytes} into fresh; ` +
        `direct writes: ${client.sent.writePlans} write plans, ${client.direct.writes} written directly, ${client.direct.puts} chunk PUTs, ${client.sent.commits} commits, ${client.direct.writeFallbacks} fallbacks, ${client.sent.batches} API batches` +
        (reader ? `; ${s.readsThrough} reads through, ${reader.statsLine()}` : '')
    );
  };
  process.on('SIGUSR2', () => log(`so far: ${stats()}`));
  // Tests and scripts wait for this line; it carries the URI clients connect to.
  process.stdout.write(
    `sledge nbd: serving ${what}${cmd.snapshotId || reader ? ' read-only' : ''} (${volume.sizeBytes} bytes, ${volume.blockSizeBytes}-byte blocks) at ${server.uri}\n`,
  );

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
    log(`stopped; ${stats()}`);
  } catch (err) {
    log(`stopped WITH DATA LOSS: ${(err as Error).message}`);
    status = 1;
  }
  await reader?.lease.stop();
  if (status === 0 && cmd.snapshotId === undefined) await onDetach(client, log);
  removeSocket(cmd.listen);
  return status;
}

function removeSocket(listen: NbdCommand['listen']): void {
  if (!('socketPath' in listen)) return;
  try {
    unlinkSync(listen.socketPath);
  } catch {
    // Already gone.
  }
}

/** Whether `args` ask for help: `--help` or `-h` before any `--` (after which words are positionals). */
function wantsHelp(args: string[]): boolean {
  for (const a of args) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

/**
 * Runs the CLI; returns the process exit status: 0 done, 1 failed (one line on stderr saying
 * why), 2 the command line is wrong (the line and the usage).
 */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === undefined || command === '--help' || command === '-h') {
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    }
    if (!isCommand(command)) throw new UsageError(`unknown command ${JSON.stringify(command)}`);
    if (command === 'help') {
      const topic = rest[0];
      if (topic === undefined || topic === '--help' || topic === '-h') process.stdout.write(USAGE);
      else if (isCommand(topic)) process.stdout.write(commandUsage(topic));
      else throw new UsageError(`no help for ${JSON.stringify(topic)}: not a command`);
      return 0;
    }
    if (wantsHelp(rest)) {
      process.stdout.write(commandUsage(command));
      return 0;
    }
    if (command === 'nbd') return await runNbd(parseNbdArgs(rest));
    if (command === 'snapshot' || command === 'clone') {
      const { parseCloneArgs, parseSnapshotArgs, runSnapshotCommand } = await import('./snapshots.ts');
      return await runSnapshotCommand(command === 'clone' ? parseCloneArgs(rest) : parseSnapshotArgs(rest), process.stdout);
    }
    if (command === 'group') {
      const { parseGroupArgs, runGroupCommand } = await import('./groups.ts');
      return await runGroupCommand(parseGroupArgs(rest), process.stdout);
    }
    if (command === 'rollback') {
      const { parseRollbackArgs, runRollback } = await import('./flatten.ts');
      return await runRollback(parseRollbackArgs(rest), process.stdout);
    }
    if (command === 'flatten') {
      const { parseFlattenArgs, runFlatten } = await import('./flatten.ts');
      return await runFlatten(parseFlattenArgs(rest), process.stdout);
    }
    if (command === 'backup') {
      const { parseBackupArgs, runBackup } = await import('./backup.ts');
      return await runBackup(parseBackupArgs(rest), process.stdout);
    }
    if (command === 'restore') {
      const { parseRestoreArgs, runRestore } = await import('./backup.ts');
      return await runRestore(parseRestoreArgs(rest), process.stdout);
    }
    return await runAdmin(command, rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`sledge: ${err.message}\n\n${isCommand(command) && command !== 'help' ? commandUsage(command) : USAGE}`);
      return 2;
    }
    process.stderr.write(formatCliError(err, debugEnabled(env)));
    return 1;
  }
}

/** The operator commands: one positional at most, `--api`, and a flag or two. */
async function runAdmin(command: Exclude<CommandName, 'nbd' | 'help' | 'snapshot' | 'clone' | 'rollback' | 'flatten' | 'backup' | 'restore' | 'group'>, args: string[]): Promise<number> {
  // Each command takes only its own flags, so a flag given to the wrong command is an error, not ignored.
  const flags = { rebuild: ['queue'], drives: [], retire: ['watch'], reactivate: [], evacuation: [] }[command];
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: { api: { type: 'string' }, ...SIGNING_OPTIONS, ...Object.fromEntries(flags.map((f) => [f, { type: 'boolean' as const }])) },
    });
  } catch (err) {
    throw parseArgsUsageError(err);
  }
  const { positionals } = parsed;
  const values = parsed.values as { api?: string; queue?: boolean; watch?: boolean; profile?: string; region?: string; unsigned?: boolean };
  if (!values.api) throw new UsageError(`--api <url> is required for ${command}`);
  checkApiUrl(values.api);
  const wanted = command === 'drives' ? 0 : 1;
  if (positionals.length !== wanted) throw new UsageError(`sledge ${command} takes ${wanted === 0 ? 'no arguments' : 'exactly one argument'}, got ${positionals.length}`);
  const target = positionals[0]!;
  const sign = await defaultSigner(values.api, signingFromValues(values));
  switch (command) {
    case 'rebuild': {
      const { rebuildVolume, formatRebuildReport } = await import('./rebuild.ts');
      const out = await rebuildVolume(values.api, target, { queue: values.queue === true, sign });
      process.stdout.write('queued' in out ? `rebuild of ${target} queued for the worker\n` : `${formatRebuildReport(out)}\n`);
      return 0;
    }
    case 'drives':
      return (await import('./drives.ts')).listDrivesCommand(values.api, process.stdout, { sign });
    case 'retire':
      return (await import('./drives.ts')).retireDriveCommand(values.api, target, process.stdout, { watch: values.watch === true, sign });
    case 'reactivate':
      return (await import('./drives.ts')).reactivateDriveCommand(values.api, target, process.stdout, { sign });
    case 'evacuation':
      return (await import('./drives.ts')).watchEvacuation(values.api, target, process.stdout, { sign });
  }
}
