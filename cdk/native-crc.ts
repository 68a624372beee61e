/**
 * Bundling options that ship the native CRC-32C to Lambda: after esbuild has bundled a
 * function, `scripts/bundle-native-crc.mjs` copies the Linux arm64 (glibc) build of the
 * `@node-rs/crc32` addon, at the version and integrity package-lock.json pins, into the asset
 * as `BUNDLED_CRC_ADDON_FILE`. shared/data/crc32c.ts loads it from there, checks it against the
 * CRC-32C check value, and uses the portable CRC where it does not load (another architecture,
 * another libc).
 *
 * For an ARM64 function only (`SledgeFunction`'s architecture); on x86 the addon never loads.
 * The synth then needs the package from npm's cache or the registry.
 *
 * @example
 * new SledgeFunction(this, 'Head', { entry: 'lambdas/api.ts', bundling: nativeCrcBundling() });
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
