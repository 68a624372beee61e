/**
 * A control plane whose head and worker run the portable (pure TypeScript) erasure codec and
 * CRC-32C: the implementations the Lambda bundle runs, since it ships neither native addon.
 *
 * It runs in a process of its own, started by test/integration/global-setup-portable.ts with
 * SLEDGE_EC_IMPL=portable and SLEDGE_CRC_IMPL=portable. A process of its own because the CRC
 * implementation is chosen once, when shared/data/crc32c.ts loads, and the integration project's
 * control plane has already loaded it, with the native one, in the test runner's process.
 *
 * So that the tests can prove which code served them, it counts the calls each erasure codec
 * receives and reports them, with the CRC implementation in use, as JSON at a stats URL.
 * On start it prints one line, `sledge-portable-plane <json>`, with the URLs and environment
 * the tests need; SIGTERM stops it.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startControlPlane } from '#local/control-plane.ts';
import { crc32c, crc32cImpl, crc32cPortable } from '#shared/data/crc32c.ts';
import { codec } from '#shared/data/erasure.ts';
import { loadNativeCodec } from '#shared/data/erasure/native.ts';
import { portableCodec } from '#shared/data/erasure/portable.ts';
import { type ErasureCodec } from '#shared/data/erasure/checks.ts';

/** The start of the line global-setup-portable.ts waits for. */
const READY_PREFIX = 'sledge-portable-plane ';

/** What the stats URL answers. */
export interface PortableStats {
  /** The implementation shared/data/crc32c.ts chose at load. */
  crc32cImpl: 'native' | 'portable';
  /** Whether the `crc32c` every module imports is the portable function itself. */
  crc32cIsPortable: boolean;
  /** The codec shared/data/erasure.ts hands out now. */
  codec: 'native' | 'portable';
  /** Calls each codec has received since start. */
  calls: Record<'native' | 'portable', { encode: number; reconstruct: number }>;
}

const calls: PortableStats['calls'] = { native: { encode: 0, reconstruct: 0 }, portable: { encode: 0, reconstruct: 0 } };

/**
 * Counts the calls `c` receives. The codecs are plain objects that shared/data/erasure.ts hands out
 * by reference, so wrapping their methods here counts every call the head and worker make.
 */
function countCalls(c: ErasureCodec, counts: { encode: number; reconstruct: number }): void {
  const encode = c.encode.bind(c);
  const reconstruct = c.reconstruct.bind(c);
  c.encode = (...args) => {
    counts.encode++;
    return encode(...args);
  };
  c.reconstruct = (...args) => {
    counts.reconstruct++;
    return reconstruct(...args);
  };
}

if (process.env.SLEDGE_EC_IMPL !== 'portable' || process.env.SLEDGE_CRC_IMPL !== 'portable') {
  throw new Error('portable-plane.ts runs with SLEDGE_EC_IMPL=portable and SLEDGE_CRC_IMPL=portable; start it through global-setup-portable.ts');
}
countCalls(portableCodec, calls.portable);
const native = loadNativeCodec();
if (native) countCalls(native, calls.native);

const plane = await startControlPlane({
  port: 0,
  endpointPort: 0,
  stackName: `sledge-portable-${Date.now().toString(36)}`,
  // The work queues keep their own visibility timeout: no test here waits for a retried job.
});
const stats = createServer((_req, res) => {
  const body: PortableStats = { crc32cImpl, crc32cIsPortable: crc32c === crc32cPortable, codec: codec().name, calls };
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
});
await new Promise<void>((resolve) => stats.listen(0, '127.0.0.1', resolve));
const statsUrl = `http://127.0.0.1:${(stats.address() as AddressInfo).port}`;
process.stdout.write(`${READY_PREFIX}${JSON.stringify({ apiUrl: plane.apiUrl, endpointUrl: plane.endpointUrl, env: plane.env, statsUrl })}\n`);

process.once('SIGTERM', () => {
  stats.close();
  plane.stop().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error('stopping the portable control plane:', err);
      process.exit(1);
    },
  );
});
