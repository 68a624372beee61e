/**
 * Whether the gateway's buffers can be backed by transparent huge pages, and how.
 *
 * On a virtual machine (Firecracker here; Lambda runs on it too) the first touch of every
 * 4 KiB page of new memory costs the guest about 13 us, and the kernel's first copy to or from
 * each page (a socket read into it, an NBD reply out of it) about 8 us more: together about
 * 4 ms of CPU per MiB of fresh memory, more than everything else a cold read does. In 2 MiB
 * pages both costs nearly vanish (docs/nbd-gateway.md, "Huge pages"). Node allocates buffers
 * with malloc, and glibc (2.35 and later) asks for huge pages for its memory when told to by
 * the `glibc.malloc.hugetlb=1` tunable, which it reads only when a process starts: so the
 * gateway can only say so, and `npm start`, `npm test` and `npm run bench` set it.
 */
import { readFileSync } from 'node:fs';

/** The tunable that makes glibc's malloc ask for transparent huge pages. */
export const HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1';

export interface HostMemory {
  platform: string;
  /** glibc's version at run time ("2.36"), or undefined (not glibc). */
  glibc: string | undefined;
  /** The kernel's transparent huge page mode: `always`, `madvise`, `never`, or undefined (unknown). */
  thp: string | undefined;
  /** The GLIBC_TUNABLES this process started with. */
  tunables: string | undefined;
}

/**
 * This host. glibc's version is read only when asked for: the only way to it is a whole
 * diagnostic report (about 8 ms), which `hugePagesAdvice` needs only when nothing cheaper
 * decided already (under `npm start`, `npm test` and the bench the tunable is set).
 */
export function hostMemory(): HostMemory {
  let thp: string | undefined;
  try {
    thp = /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1];
  } catch {
    thp = undefined;
  }
  return {
    platform: process.platform,
    get glibc() {
      return (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime;
    },
    thp,
    tunables: process.env.GLIBC_TUNABLES,
  };
}

/**
 * A line of advice when this process's buffers are in 4 KiB pages but could be in huge pages
 * (Linux, glibc 2.35 or later, huge pages on request, the tunable not set); otherwise null.
 */
export function hugePagesAdvice(host: HostMemory): string | null {
  if (host.platform !== 'linux' || host.thp !== 'madvise') return null;
  if ((host.tunables ?? '').split(':').some((t) => t.startsWith('glibc.malloc.hugetlb='))) return null;
  const glibc = host.glibc;
  if (!glibc) return null;
  const [major, minor] = glibc.split('.').map(Number);
  if (!(major! > 2 || (major === 2 && minor! >= 35))) return null;
  return (
    `buffers are in 4 KiB pages; start the gateway with GLIBC_TUNABLES=${HUGE_PAGES_TUNABLE} to put them in huge pages ` +
    '(on a virtual machine about half the CPU per byte of a cold read: docs/nbd-gateway.md, "Huge pages")'
  );
}
