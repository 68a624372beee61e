// One log line per Lambda execution environment, when a handler module loads: which CRC-32C and
// erasure codec this environment runs. The bundle carries the arm64 CRC addon and falls back to
// the portable CRC where it does not load (cdk/native-crc.ts), so this line is how a deployment
// shows which one it got. Silent outside Lambda (the local control plane imports the handlers).
import { crc32cImpl, crc32cNativeSource } from '#shared/data/crc32c.ts';
import { codec } from '#shared/data/erasure.ts';

export function logColdStart(fn: 'api' | 'worker'): void {
  if (!process.env.AWS_LAMBDA_FUNCTION_NAME) return;
  console.log(JSON.stringify({ msg: 'cold start', fn, crc32c: crc32cImpl, crc32cSource: crc32cNativeSource, erasure: codec().name, arch: process.arch }));
}
