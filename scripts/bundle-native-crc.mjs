#!/usr/bin/env node
/**
 * Puts the Linux arm64 (glibc) build of the `@node-rs/crc32` addon into a Lambda bundle:
 * `node scripts/bundle-native-crc.mjs <bundle directory> <file name>`.
 *
 * The package is the one package-lock.json pins (`@node-rs/crc32-linux-arm64-gnu`, an optional
 * dependency of `@node-rs/crc32` that npm skips on other machines), fetched with `npm pack`
 * (from npm's cache when it is there), checked against the lockfile's integrity hash, and its
 * `.node` file copied into the bundle under `<file name>`, where shared/data/crc32c.ts looks for
 * it. Nothing runs at install time, so no install script needs approving.
 *
 * Any failure exits non-zero with one line saying why, which fails the synth: a bundle is never
 * silently built without the addon it was asked to carry.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE = '@node-rs/crc32-linux-arm64-gnu';
const ADDON_IN_PACKAGE = 'package/crc32.linux-arm64-gnu.node';

const [outputDir, fileName] = process.argv.slice(2);
if (!outputDir || !fileName) {
  console.error('usage: node scripts/bundle-native-crc.mjs <bundle directory> <file name>');
  process.exit(2);
}

const lockPath = fileURLToPath(new URL('../package-lock.json', import.meta.url));
const locked = JSON.parse(readFileSync(lockPath, 'utf8')).packages?.[`node_modules/${PACKAGE}`];
if (!locked?.version || !locked?.integrity?.startsWith('sha512-')) {
  console.error(`bundle-native-crc: package-lock.json pins no ${PACKAGE} with a sha512 integrity`);
  process.exit(1);
}

const work = mkdtempSync(join(tmpdir(), 'sledge-native-crc-'));
try {
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const [packed] = JSON.parse(
    execFileSync(npm, ['pack', `${PACKAGE}@${locked.version}`, '--json', '--prefer-offline', '--pack-destination', work], {
      cwd: work,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
  );
  const tarball = join(work, packed.filename);
  const integrity = `sha512-${createHash('sha512').update(readFileSync(tarball)).digest('base64')}`;
  if (integrity !== locked.integrity) {
    throw new Error(`${PACKAGE}@${locked.version} does not match package-lock.json (${integrity} != ${locked.integrity})`);
  }
  execFileSync('tar', ['-xzf', tarball, '-C', work, ADDON_IN_PACKAGE], { stdio: 'inherit' });
  copyFileSync(join(work, ADDON_IN_PACKAGE), join(outputDir, fileName));
} catch (err) {
  console.error(`bundle-native-crc: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
} finally {
  rmSync(work, { recursive: true, force: true });
}
