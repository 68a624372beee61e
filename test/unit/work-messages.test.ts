/**
 * The repair request's message (shared/core/work-messages.ts; docs/evacuation.md, "Read
 * repair"): parsed only when whole, and sent to the evacuation queue.
 */
import { describe, expect, it } from 'vitest';
import { parseWorkMessage, queueOf, UnknownWorkMessageError } from '#shared/core/work-messages.ts';

const good = { type: 'repair-chunk', volumeId: 'vol-1', segmentId: '000000000007-abcd', chunk: 3, bucket: 'sled-a', key: 'd01/vol-1/000000000007-abcd.3' };

describe('repair-chunk messages', () => {
  it('parse back to what was sent, and go to the evacuation queue', () => {
    const msg = parseWorkMessage(JSON.stringify(good));
    expect(msg).toEqual(good);
    expect(queueOf(msg)).toBe('evacuation');
  });

  it('are refused when a field is missing or malformed', () => {
    for (const bad of [
      { ...good, chunk: -1 },
      { ...good, chunk: 1.5 },
      { ...good, chunk: '3' },
      { ...good, key: '' },
      { ...good, bucket: undefined },
      { ...good, segmentId: 7 },
      { ...good, volumeId: '' },
    ]) {
      expect(() => parseWorkMessage(JSON.stringify(bad)), JSON.stringify(bad)).toThrow(UnknownWorkMessageError);
    }
  });
});
