/** A PRNG stream (mulberry32) from a 32-bit seed. */
export function stream(seed: number): { next: () => number; int: (n: number) => number } {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n: number) => Math.floor(next() * n) };
}

/** A seeded PRNG (mulberry32) so randomized tests can print and replay their seed. */
export function seeded(label: string): { seed: number; next: () => number; int: (n: number) => number } {
  const fromEnv = process.env.SLEDGE_SEED;
  const seed = fromEnv ? Number(fromEnv) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
  console.log(`${label}: seed ${seed} (replay with SLEDGE_SEED=${seed})`);
  return { seed, ...stream(seed) };
}

/**
 * Streams of their own for `n` concurrent lanes, drawn from `rng` at once: each lane's draws
 * then do not depend on how the lanes interleave, so a seed replays the same work.
 */
export function laneStreams(rng: { next: () => number }, n: number): Array<{ next: () => number; int: (n: number) => number }> {
  return Array.from({ length: n }, () => stream((rng.next() * 2 ** 32) >>> 0));
}
