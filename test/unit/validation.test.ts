import { describe, expect, it } from 'vitest';
import { decodeBatch, encodeBatch } from '#shared/api/batch.ts';
import { InvalidInputError } from '#shared/core/errors.ts';
import type { VolumeRecord } from '#shared/core/records.ts';
import { EMPTY_RESERVATIONS } from '#shared/control/reservations.ts';
import { checkRange } from '#shared/data/volume-rules.ts';

const vol: VolumeRecord = {
  volumeId: 'vol-test',
  sizeBytes: 1 << 20,
  blockSizeBytes: 4096,
  dataChunks: 4,
  parityChunks: 2,
  pageBlocks: 256,
  state: 'active',
  headSeq: 0,
  headSegmentId: '',
  reservations: EMPTY_RESERVATIONS,
  createdAt: '',
  updatedAt: '',
};

describe('range validation', () => {
  it('accepts aligned ranges inside the volume', () => {
    expect(() => checkRange(vol, 0, 4096, 4 << 20)).not.toThrow();
    expect(() => checkRange(vol, (1 << 20) - 4096, 4096, null)).not.toThrow();
  });

  it.each([
    [4097, 4096, /offset 4097 is not a multiple of the block size 4096/],
    [0, 100, /length 100 is not a multiple of the block size 4096/],
    [-4096, 4096, /offset must be a non-negative integer/],
    [0, 0, /length must be a positive integer/],
    [0, 1.5, /length must be a positive integer/],
    [1 << 20, 4096, /beyond the end of volume vol-test/],
    [0, 8 << 20, /over the limit of 4194304 bytes/],
  ])('refuses offset %d length %d', (offset, length, message) => {
    expect(() => checkRange(vol, offset, length, 4 << 20)).toThrow(InvalidInputError);
    expect(() => checkRange(vol, offset, length, 4 << 20)).toThrow(message);
  });
});

describe('batch body', () => {
  it('round-trips data and zero extents', () => {
    const a = Buffer.alloc(4096, 1);
    const b = Buffer.alloc(8192, 2);
    const pieces = decodeBatch(encodeBatch([{ offset: 0, data: a }, { offset: 8192, length: 4096, zero: true }, { offset: 65536, data: b }]));
    expect(pieces.map((p) => [p.offset, p.length, p.data?.length])).toEqual([
      [0, 4096, 4096],
      [8192, 4096, undefined],
      [65536, 8192, 8192],
    ]);
    expect(pieces[0]!.data!.equals(a) && pieces[2]!.data!.equals(b)).toBe(true);
  });

  it.each([
    ['no magic', Buffer.from('hello world!'), /must start with/],
    ['header length past the end', Buffer.concat([Buffer.from('SLB1'), Buffer.from([0, 0, 1, 0])]), /beyond the body/],
    ['header not JSON', Buffer.concat([Buffer.from('SLB1'), Buffer.from([0, 0, 0, 3]), Buffer.from('{{{')]), /not valid JSON/],
    ['no extents', Buffer.concat([Buffer.from('SLB1'), Buffer.from([0, 0, 0, 2]), Buffer.from('{}')]), /non-empty "extents"/],
  ])('refuses %s', (_, body, message) => {
    expect(() => decodeBatch(body)).toThrow(message);
  });

  it('refuses bodies shorter or longer than their extents', () => {
    const body = encodeBatch([{ offset: 0, data: Buffer.alloc(4096) }]);
    expect(() => decodeBatch(body.subarray(0, body.length - 1))).toThrow(/body ends/);
    expect(() => decodeBatch(Buffer.concat([body, Buffer.alloc(1)]))).toThrow(/1 bytes after the last extent/);
  });
});
