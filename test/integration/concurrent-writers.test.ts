/**
 * Concurrent writers on one volume, through the HTTP API: no acknowledged write may be lost.
 *
 * Every write is one commit transaction that advances the volume's commit head and replaces
 * the pages it changes under version conditions (docs/page-map.md), so writers that share pages
 * keep cancelling each other's transactions. An endpoint whose cancelled transactions are not
 * isolated (plain moto_server) then undoes commits that were already acknowledged; this test
 * finds such losses block by block.
 */
import { describe, expect, it } from 'vitest';
import { seeded } from '../unit/seed.ts';
import { http, testApi } from './helpers.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const VOLUME_BYTES = 8 * MiB;
const BLOCK_BYTES = 4 * KiB;
/** Each writer owns every WRITERS-th region of this size, so all writers share every 1 MiB page. */
const REGION_BYTES = 64 * KiB;
const WRITERS = 4;
const WRITES_PER_WRITER = 80;
/** A write that answers 503 is sent again at most this many times in all; then it counts as unacknowledged. */
const WRITE_ATTEMPTS_MAX = 4;
/** Upper bound on the wait before sending a 503'd write again, whatever Retry-After says. */
const RETRY_WAIT_MAX_MS = 1_000;
const READ_BYTES_MAX = 4 * MiB;

interface PlannedWrite {
  writer: number;
  /** Position in the writer's sequence. */
  index: number;
  offset: number;
  data: Buffer;
}

interface BlockState {
  /** The content of the last acknowledged write of this block; undefined: never written (zeros). */
  acknowledged?: Buffer;
  /** Which write that was, for messages. */
  acknowledgedBy?: string;
  /** Contents of unacknowledged writes sent after it, any of which may have landed. */
  unacknowledged: Buffer[];
}

const { api } = testApi({ sledgeEnv: true });

/** Random bytes from the seeded generator, so that a seed replays the very same writes. */
function seededBytes(rng: { next: () => number }, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) out.writeUInt32LE(Math.floor(rng.next() * 2 ** 32), i);
  return out;
}

function plan(rng: ReturnType<typeof seeded>): PlannedWrite[][] {
  const regions = VOLUME_BYTES / REGION_BYTES;
  const blocksPerRegion = REGION_BYTES / BLOCK_BYTES;
  return Array.from({ length: WRITERS }, (_, writer) => {
    const own = Array.from({ length: regions / WRITERS }, (_, i) => i * WRITERS + writer);
    return Array.from({ length: WRITES_PER_WRITER }, (_, index) => {
      const region = own[rng.int(own.length)]!;
      // Anywhere inside the region, from one block to all of it.
      const first = rng.int(blocksPerRegion);
      const blocks = 1 + rng.int(blocksPerRegion - first);
      return { writer, index, offset: region * REGION_BYTES + first * BLOCK_BYTES, data: seededBytes(rng, blocks * BLOCK_BYTES) };
    });
  });
}

describe('concurrent writers on one volume', () => {
  it('lose no acknowledged write when they share pages and race on commits', async () => {
    const rng = seeded('concurrent writers');
    const writes = plan(rng);
    const vol = await api.createVolume({ sizeBytes: VOLUME_BYTES });
    const blocks: BlockState[] = Array.from({ length: VOLUME_BYTES / BLOCK_BYTES }, () => ({ unacknowledged: [] }));
    const counts = { acknowledged: 0, unacknowledged: 0, retried: 0 };
    /** Answers other than 200 and 503: failures of the test, but counted rather than thrown, so the report is complete. */
    const unexpected: string[] = [];

    /** Sends one write, again after each 503 (bounded); records its outcome block by block. */
    const send = async (w: PlannedWrite): Promise<void> => {
      const name = `writer ${w.writer} write ${w.index} at ${w.offset}+${w.data.length}`;
      let status = 0;
      for (let attempt = 1; attempt <= WRITE_ATTEMPTS_MAX; attempt++) {
        const r = await http(`${api.url}/volumes/${vol.volumeId}/data?offset=${w.offset}`, {
          method: 'PUT',
          body: w.data,
          headers: { 'content-type': 'application/octet-stream' },
        });
        status = r.status;
        if (status === 200) break;
        if (status !== 503) {
          unexpected.push(`${name}: ${status} ${r.body.toString()}`);
          break;
        }
        if (attempt < WRITE_ATTEMPTS_MAX) {
          counts.retried++;
          const retryAfterMs = Number(r.headers.get('retry-after') ?? 0) * 1000;
          await new Promise((resolve) => setTimeout(resolve, Math.min(RETRY_WAIT_MAX_MS, Math.max(50, retryAfterMs))));
        }
      }
      const first = w.offset / BLOCK_BYTES;
      for (let b = 0; b < w.data.length / BLOCK_BYTES; b++) {
        const content = w.data.subarray(b * BLOCK_BYTES, (b + 1) * BLOCK_BYTES);
        const block = blocks[first + b]!;
        if (status === 200) {
          block.acknowledged = content;
          block.acknowledgedBy = name;
          block.unacknowledged = [];
        } else {
          block.unacknowledged.push(content);
        }
      }
      if (status === 200) counts.acknowledged++;
      else counts.unacknowledged++;
    };

    // Each writer sends its writes one after another; the writers run side by side.
    await Promise.all(
      writes.map(async (sequence) => {
        for (const w of sequence) await send(w);
      }),
    );

    const zeros = Buffer.alloc(BLOCK_BYTES);
    const wrong: string[] = [];
    const lostWrites = new Set<string>();
    /** Compares the blocks of one read with what they may hold; a failed read shows nothing, so its acknowledged blocks count as wrong. */
    const check = (offset: number, length: number, got: { status: number; body: Buffer }): void => {
      for (let b = 0; b < length / BLOCK_BYTES; b++) {
        const index = offset / BLOCK_BYTES + b;
        const block = blocks[index]!;
        const content = got.status === 200 ? got.body.subarray(b * BLOCK_BYTES, (b + 1) * BLOCK_BYTES) : undefined;
        if (content === undefined && block.acknowledged === undefined) continue;
        const allowed = [block.acknowledged ?? zeros, ...block.unacknowledged];
        if (content && allowed.some((a) => a.equals(content))) continue;
        const seen = content ? 'holds other data' : `cannot be read (${got.status})`;
        wrong.push(`block ${index} (offset ${index * BLOCK_BYTES}) ${seen}: expected ${block.acknowledgedBy ?? 'zeros (never acknowledged)'} or one of ${block.unacknowledged.length} later unacknowledged write(s)`);
        if (block.acknowledgedBy) lostWrites.add(block.acknowledgedBy);
      }
    };
    for (let offset = 0; offset < VOLUME_BYTES; offset += READ_BYTES_MAX) {
      const got = await api.readRaw(vol.volumeId, offset, READ_BYTES_MAX);
      if (got.status === 200) {
        check(offset, READ_BYTES_MAX, got);
        continue;
      }
      // Reads of one region at a time tell which blocks are unreadable, not just that some are.
      unexpected.push(`read at ${offset}+${READ_BYTES_MAX}: ${got.status} ${got.body.toString()}`);
      for (let region = offset; region < offset + READ_BYTES_MAX; region += REGION_BYTES) {
        check(region, REGION_BYTES, await api.readRaw(vol.volumeId, region, REGION_BYTES));
      }
    }
    console.log(
      `concurrent writers: seed ${rng.seed}, ${WRITERS} writers, ${counts.acknowledged} writes acknowledged, ${counts.unacknowledged} unacknowledged (503 after ${WRITE_ATTEMPTS_MAX} attempts), ` +
        `${counts.retried} retries, ${unexpected.length} other answers; ${wrong.length} of ${blocks.length} blocks wrong, ${lostWrites.size} acknowledged write(s) lost`,
    );
    expect(counts.acknowledged + counts.unacknowledged).toBe(WRITERS * WRITES_PER_WRITER);
    // Writes that never land would make the comparison below vacuous.
    expect(counts.acknowledged, 'acknowledged writes').toBeGreaterThanOrEqual((WRITERS * WRITES_PER_WRITER * 3) / 4);
    // One assertion for both, so that a failure shows examples of each.
    expect(
      { otherAnswers: unexpected.slice(0, 10), wrongBlocks: wrong.slice(0, 20) },
      `${unexpected.length} answer(s) other than 200 and 503, ${wrong.length} wrong block(s), ${lostWrites.size} acknowledged write(s) lost; replay with SLEDGE_SEED=${rng.seed}`,
    ).toEqual({ otherAnswers: [], wrongBlocks: [] });
  });
});
