import { describe, expect, it } from 'vitest';
import { failureNoteKey, failureReason } from '#shared/maintenance/failure-notes.ts';

describe('failure notes (docs/backup.md, "Failure notes")', () => {
  it('key a message by what it says, so a redriven or re-sent copy finds the same note', () => {
    const a = failureNoteKey('{"type":"backup-volume","backupId":"bkp-0123456789abcdef-0190f0e1a2b3-a1b2c3"}');
    const spaced = failureNoteKey('{ "backupId": "bkp-0123456789abcdef-0190f0e1a2b3-a1b2c3", "type": "backup-volume" }');
    expect(spaced).toEqual(a);
    expect(a.partition).toMatch(/^failure#[0-9a-f]{32}$/);
    expect(a.sort).toBe('#note');
    expect(failureNoteKey('{"type":"backup-volume","backupId":"bkp-0123456789abcdef-0190f0e1a2b3-a1b2c4"}')).not.toEqual(a);
    // A body that is not a work message is keyed as it is.
    expect(failureNoteKey('{"type":"no-such-work"}')).toEqual(failureNoteKey('{"type":"no-such-work"}'));
    expect(failureNoteKey('{"type":"no-such-work"}')).not.toEqual(failureNoteKey('{ "type":"no-such-work"}'));
  });

  it('say the error and keep the reason bounded', () => {
    expect(failureReason(new TypeError('boom'))).toBe('TypeError: boom');
    expect(failureReason('plain')).toBe('plain');
    const long = failureReason(new Error('x'.repeat(5000)));
    expect(long.length).toBe(1024);
    expect(long.endsWith('...')).toBe(true);
  });
});
