import { describe, expect, it } from 'vitest';
import { hostMemory, hugePagesAdvice, type HostMemory } from '#cli/huge-pages.ts';

const host = (over: Partial<HostMemory> = {}): HostMemory => ({ platform: 'linux', glibc: '2.36', thp: 'madvise', tunables: undefined, ...over });

describe('huge pages advice', () => {
  it('advises the tunable where glibc would honour it and huge pages come on request', () => {
    expect(hugePagesAdvice(host())).toMatch(/GLIBC_TUNABLES=glibc\.malloc\.hugetlb=1/);
    expect(hugePagesAdvice(host({ glibc: '2.35' }))).not.toBeNull();
    expect(hugePagesAdvice(host({ glibc: '3.0' }))).not.toBeNull();
    expect(hugePagesAdvice(host({ tunables: 'glibc.malloc.arena_max=2' }))).not.toBeNull();
  });

  it('says nothing once the tunable is set (to either value), or where it would change nothing', () => {
    expect(hugePagesAdvice(host({ tunables: 'glibc.malloc.hugetlb=1' }))).toBeNull();
    expect(hugePagesAdvice(host({ tunables: 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0' }))).toBeNull();
    expect(hugePagesAdvice(host({ glibc: '2.34' }))).toBeNull();
    expect(hugePagesAdvice(host({ glibc: undefined }))).toBeNull();
    expect(hugePagesAdvice(host({ thp: 'always' }))).toBeNull();
    expect(hugePagesAdvice(host({ thp: 'never' }))).toBeNull();
    expect(hugePagesAdvice(host({ thp: undefined }))).toBeNull();
    expect(hugePagesAdvice(host({ platform: 'darwin' }))).toBeNull();
  });

  it('reads this host', () => {
    const h = hostMemory();
    expect(h.platform).toBe(process.platform);
    expect(h.tunables).toBe(process.env.GLIBC_TUNABLES);
  });
});
