/** Small helpers for asynchronous work. */

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A promise and the function that resolves it, for one party to wait on what another settles. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Bounded parallelism for background deletes. */
export async function forEachLimited<T>(items: AsyncIterable<T> | Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<number> {
  const inflight = new Set<Promise<void>>();
  let n = 0;
  for await (const item of items) {
    const p = fn(item).finally(() => inflight.delete(p));
    inflight.add(p);
    n++;
    if (inflight.size >= limit) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  return n;
}
