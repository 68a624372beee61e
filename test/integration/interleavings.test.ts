import { describe, expect, it } from 'vitest';
import { FencedError } from '#shared/core/errors.ts';
import { getVolume } from '#shared/aws/pagemap/volumes.ts';
import { completeWrite, prepareWrite, writePieces, type PreparedWrite } from '#shared/data/write.ts';
import { seeded } from '../unit/seed.ts';
import { http, testApi } from './helpers.ts';

/**
 * Randomized interleavings of three heads on one volume: writes split into upload and commit
 * with stalls in between, forced takeovers (preempts), lease lapses followed by promotion,
 * renewals and restarts. After every step the volume must equal a model holding exactly the
 * acknowledged writes of whoever was the rightful primary when it committed: no fenced commit
 * ever lands, and no acknowledged write is lost. Seed printed; SLEDGE_SEED replays it.
 * SLEDGE_INTERLEAVINGS sets the number of steps (default 1000).
 */
const STEPS = Number(process.env.SLEDGE_INTERLEAVINGS ?? 1000);
const BLOCK = 4096;
const BLOCKS = 16;
const HEADS = ['a', 'b', 'c'] as const;
type Head = (typeof HEADS)[number];
const LEASE_MS = 150;

const { apiUrl: url } = testApi({ sledgeEnv: true });

const json = { 'content-type': 'application/json' };

describe('randomized head interleavings', () => {
  it(`never lands a fenced commit and never loses an acknowledged write over ${STEPS} steps`, async () => {
    const rng = seeded('head interleavings');
    const created = await http(`${url}/volumes`, { method: 'POST', body: JSON.stringify({ sizeBytes: BLOCKS * BLOCK }), headers: json });
    const id: string = created.json.volumeId;
    const heads = (path: string, body: unknown, method = 'POST') => http(`${url}/volumes/${id}/heads${path}`, { method, body: JSON.stringify(body), headers: json });
    expect((await heads('', { primary: 'a', reserves: ['b', 'c'], leaseDurationMs: LEASE_MS }, 'PUT')).status).toBe(200);

    // The model: acknowledged bytes, who is primary, who is registered.
    const model = Buffer.alloc(BLOCKS * BLOCK);
    let primary: Head = 'a';
    const registered = new Set<Head>(HEADS);
    const pending = new Map<Head, { prepared: PreparedWrite; offset: number; data: Buffer }>();
    const counts = { prepared: 0, committed: 0, fencedCommits: 0, fencedWrites: 0, writes: 0, preempts: 0, lapses: 0, renews: 0, restarts: 0 };
    const randomData = (n: number) => Buffer.from(Array.from({ length: n }, () => rng.int(256)));
    const pick = <T>(xs: readonly T[]): T => xs[rng.int(xs.length)]!;
    const rightful = (h: Head) => h === primary && registered.has(h);

    for (let step = 0; step < STEPS; step++) {
      const h = pick(HEADS);
      const r = rng.next();
      const where: string = `step ${step} (seed ${rng.seed}), head ${h}, primary ${primary}`;
      if (r < 0.22 && !pending.has(h)) {
        // Upload phase of a write; the commit comes in a later step (a stall of any length).
        const start = rng.int(BLOCKS);
        const count = 1 + rng.int(Math.min(4, BLOCKS - start));
        const data = randomData(count * BLOCK);
        try {
          const prepared = await prepareWrite((await getVolume(id))!, [{ offset: start * BLOCK, length: data.length, data }], { id: `head-${h}`, key: `head:${h}` });
          expect(rightful(h), `${where}: prepare allowed for a head that is not the rightful primary`).toBe(true);
          pending.set(h, { prepared, offset: start * BLOCK, data });
          counts.prepared++;
        } catch (err) {
          if (!(err instanceof FencedError)) throw err;
          expect(rightful(h), `${where}: rightful primary refused at prepare: ${(err as Error).message}`).toBe(false);
        }
      } else if (r < 0.45 && pending.has(h)) {
        const { prepared, offset, data } = pending.get(h)!;
        pending.delete(h);
        // The commit is allowed only if h is primary now by the very registration it prepared with.
        const sameRegistration = registered.has(h) && prepared.writer.generation === (await getVolume(id))!.reservations.registrants[`head:${h}`];
        const allowed = rightful(h) && sameRegistration;
        try {
          let result = await completeWrite(prepared);
          if (result === null) {
            // Another commit moved the head first: a live head retries the whole write.
            result = await writePieces(id, [{ offset, length: data.length, data }], { id: `head-${h}`, key: `head:${h}` });
          }
          expect(allowed, `${where}: a fenced commit landed`).toBe(true);
          data.copy(model, offset);
          counts.committed++;
        } catch (err) {
          if (!(err instanceof FencedError)) throw err;
          expect(allowed, `${where}: the rightful primary's commit was refused: ${(err as Error).message}`).toBe(false);
          counts.fencedCommits++;
        }
      } else if (r < 0.6) {
        // A whole write over HTTP.
        const start = rng.int(BLOCKS);
        const data = randomData(BLOCK);
        const res = await http(`${url}/volumes/${id}/data?offset=${start * BLOCK}`, {
          method: 'PUT',
          body: data,
          headers: { 'content-type': 'application/octet-stream', 'x-sledge-reservation-key': `head:${h}` },
        });
        expect(res.status, `${where}: ${res.body.toString().slice(0, 200)}`).toBe(rightful(h) ? 200 : 409);
        if (res.status === 200) {
          data.copy(model, start * BLOCK);
          counts.writes++;
        } else counts.fencedWrites++;
      } else if (r < 0.7) {
        // Forced takeover by a registered reserve (an operator's or a watchdog's decision).
        if (h === primary || !registered.has(h)) continue;
        const res = await heads('/promote', { head: h, force: true });
        expect(res.status, `${where}: ${res.body.toString()}`).toBe(200);
        registered.delete(primary);
        primary = h;
        counts.preempts++;
      } else if (r < 0.78) {
        // The primary stops renewing; once its lease lapses, a registered reserve promotes itself.
        if (h === primary || !registered.has(h)) continue;
        const view = (await http(`${url}/volumes/${id}/heads`)).json;
        const wait = Date.parse(view.leaseExpiresAt) - Date.now() + 5;
        if (wait > 0) await new Promise((res) => setTimeout(res, wait));
        const res = await heads('/promote', { head: h });
        expect(res.status, `${where}: ${res.body.toString()}`).toBe(200);
        registered.delete(primary);
        primary = h;
        counts.lapses++;
      } else if (r < 0.9) {
        const res = await heads('/renew', { head: h });
        expect(res.status, `${where}: renew`).toBe(rightful(h) ? 200 : 409);
        counts.renews++;
      } else {
        // Restart: in-flight work is lost; a fenced head rejoins as a reserve (new registration).
        pending.delete(h);
        if (!registered.has(h)) {
          const res = await heads('/join', { head: h });
          expect(res.status, `${where}: join ${res.body.toString()}`).toBe(200);
          registered.add(h);
        }
        counts.restarts++;
      }
      const got = await http(`${url}/volumes/${id}/data?offset=0&length=${BLOCKS * BLOCK}`);
      expect(got.status).toBe(200);
      if (!got.body.equals(model)) expect.fail(`${where}: the volume differs from the acknowledged writes`);
    }
    console.log(`interleavings: ${JSON.stringify(counts)}`);
    // The run must have exercised the interesting paths, or it proves little.
    expect(counts.fencedCommits).toBeGreaterThan(0);
    expect(counts.committed).toBeGreaterThan(0);
    expect(counts.preempts + counts.lapses).toBeGreaterThan(0);
  });
});
