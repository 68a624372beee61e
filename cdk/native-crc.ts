/**
 * Bundling options that ship the native CRC-32C to Lambda: after esbuild has bundled a
 * function, `scripts/bundle-native-crc.mjs` copies the Linux arm64 (glibc) build of the
 * `@node-rs/crc32` addon, at the version and integrity package-lock.json pins, into the asset
 * as `BUNDLED_CRC_ADDON_FILE`. shared/data/crc32c.ts loads it from there, checks it against the
 * CRC-32C check value, and uses the portable CRC where it does not load (another architecture,
 * another libc).
 *
 * `SledgeFunction` (cdk/function.ts) adds these hooks to every ARM64 function, so the stack's
 * head and worker carry the addon; on x86 it would never load, and is left out. The synth then
 * needs the package from npm's cache or the registry (`npm pack`), and fails if neither has it
 * at the pinned integrity. The handlers log which CRC they loaded at cold start
 * (lambdas/cold-start.ts).
 */
import type { BundlingOptions, ICommandHooks } from 'aws-cdk-lib/aws-lambda-nodejs';
import { BUNDLED_CRC_ADDON_FILE } from '#shared/data/crc32c.ts';

const SCRIPT = 'scripts/bundle-native-crc.mjs';

/** Shell-quotes one argument. */
function quote(arg: string): string {
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

export function nativeCrcBundling(): Pick<BundlingOptions, 'commandHooks'> {
  const hooks: ICommandHooks = {
    beforeBundling: () => [],
    beforeInstall: () => [],
    // inputDir is the project root (NodejsFunction's projectRoot), locally or in Docker.
    afterBundling: (inputDir, outputDir) => [`node ${quote(`${inputDir}/${SCRIPT}`)} ${quote(outputDir)} ${quote(BUNDLED_CRC_ADDON_FILE)}`],
  };
  return { commandHooks: hooks };
}
