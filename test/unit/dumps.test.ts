import { describe, expect, it } from 'vitest';
import type { DriveRecord } from '#shared/core/drive-records.ts';
import { chooseDumpDrive } from '#shared/control/dumps.ts';

const GiB = 1024 ** 3;
const drive = (id: string, over: Partial<DriveRecord> = {}): DriveRecord => ({
  driveId: id,
  sled: 's',
  sledIndex: 0,
  drive: id,
  state: 'active',
  capacityBytes: 10 * GiB,
  usedBytes: 0,
  serviceLoad: 0,
  dumpPrepared: false,
  dumps: {},
  ...over,
});

describe('choosing the dump drive (fits, least needed by service, least preparation)', () => {
  it('takes only drives that fit, are in service or spare, and have no dump in progress', () => {
    const drives = [
      drive('full', { usedBytes: 10 * GiB - 100 }),
      drive('retiring', { state: 'retiring' }),
      drive('failed', { state: 'failed' }),
      drive('busy', { dumpInProgress: 'dump-1' }),
      drive('ok'),
    ];
    expect(chooseDumpDrive(drives, 1000)?.driveId).toBe('ok');
    expect(chooseDumpDrive(drives.slice(0, 4), 1000)).toBeNull();
  });

  it('prefers the drive least needed by normal service: spare first, then low load', () => {
    expect(chooseDumpDrive([drive('active-idle'), drive('spare-busy', { state: 'spare', serviceLoad: 50 })], 10)?.driveId).toBe('spare-busy');
    expect(chooseDumpDrive([drive('busy', { serviceLoad: 9 }), drive('quiet', { serviceLoad: 1 })], 10)?.driveId).toBe('quiet');
  });

  it('then the one needing the least preparation, then the best size match', () => {
    expect(chooseDumpDrive([drive('raw'), drive('prepared', { dumpPrepared: true })], 10)?.driveId).toBe('prepared');
    const big = drive('big', { dumpPrepared: true });
    const snug = drive('snug', { dumpPrepared: true, usedBytes: 10 * GiB - 2000 });
    expect(chooseDumpDrive([big, snug], 1000)?.driveId).toBe('snug');
    // Service need outranks preparation and fit.
    expect(chooseDumpDrive([snug, drive('spare', { state: 'spare' })], 1000)?.driveId).toBe('spare');
  });
});
