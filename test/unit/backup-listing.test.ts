import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '#shared/core/errors.ts';
import { LAMBDA_PAYLOAD_LIMIT_BYTES } from '#shared/api/http.ts';
import { fitPage, pageLimit, pageStart } from '#shared/core/paging.ts';

/** The paging of the vault's lists (shared/core/paging.ts, shared/backup/listing.ts, docs/backup.md "Listing without a volume"), without a vault. */
describe('the pages of the vault lists', () => {
  it('take limit as GET /volumes does: 1 to 1000, default 100', () => {
    expect(pageLimit(undefined)).toBe(100);
    expect(pageLimit('1')).toBe(1);
    expect(pageLimit('1000')).toBe(1000);
    for (const bad of ['0', '1001', '-1', '1.5', 'ten', '']) {
      expect(() => pageLimit(bad), bad).toThrow(InvalidInputError);
      expect(() => pageLimit(bad), bad).toThrow(/^limit must be an integer from 1 to 1000, got /);
    }
  });

  it('start after the id next names, and refuse one the list never gives', () => {
    const isOurs = (id: string) => id.startsWith('rst-');
    expect(pageStart(undefined, 'restores', isOurs)).toBeUndefined();
    expect(pageStart('', 'restores', isOurs)).toBeUndefined();
    expect(pageStart('rst-1', 'restores', isOurs)).toBe('rst-1');
    expect(() => pageStart('bkp-1', 'restores', isOurs)).toThrow('next must be a token from an earlier answer listing restores, got "bkp-1"');
    // A long token is not echoed whole.
    expect(() => pageStart('x'.repeat(10_000), 'restores', isOurs)).toThrow(new RegExp(`got "${'x'.repeat(100)}\\.\\.\\."$`));
  });

  it('end a page early, with next, before its entries outgrow what a Lambda result carries', () => {
    // Group restores of 64 members each: 1,000 of them would be far over 6 MB.
    const member = { sourceVolumeId: 'vol-0123456789abcdef', backupId: 'bkp-0123456789abcdef-0190f0e1a2b3-a1b2c3', state: 'complete', bytesRestored: 1 };
    const views = Array.from({ length: 1000 }, (_, i) => ({ id: `grst-${String(i).padStart(12, '0')}`, restores: Array.from({ length: 64 }, () => member) }));
    expect(Buffer.byteLength(JSON.stringify(JSON.stringify(views)))).toBeGreaterThan(LAMBDA_PAYLOAD_LIMIT_BYTES);
    const page = fitPage(views, (v) => v.id, 'grst-999999999999');
    expect(page.items.length).toBeGreaterThan(0);
    expect(page.items.length).toBeLessThan(views.length);
    expect(page.items).toEqual(views.slice(0, page.items.length));
    expect(page.next).toBe(page.items[page.items.length - 1]!.id);
    expect(Buffer.byteLength(JSON.stringify(JSON.stringify({ groupRestores: page.items, next: page.next })))).toBeLessThan(LAMBDA_PAYLOAD_LIMIT_BYTES);
    // A page that fits is kept whole, with the next it had (or none).
    expect(fitPage(views.slice(0, 3), (v) => v.id, undefined)).toEqual({ items: views.slice(0, 3) });
    expect(fitPage(views.slice(0, 3), (v) => v.id, 'grst-000000000002')).toEqual({ items: views.slice(0, 3), next: 'grst-000000000002' });
  });
});
