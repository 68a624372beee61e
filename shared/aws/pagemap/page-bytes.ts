/**
 * The compact form of a page (or frozen page) item's contents, its `pg` attribute
 * (docs/page-map.md, "Page items"). A page's stored form (`EncodedPage`: segment references and
 * 10-byte extent records) is what checkpoints copy and compare; only the item holds it packed:
 *
 *   format byte (1)
 *   varint: number of segment references, then each:
 *     0, varint seq, 4 bytes   a segment of the item's own volume (`<volumeId>/<seq>-<8 hex>`)
 *     1, varint length, UTF-8  any other reference, verbatim (a clone's parent's segment)
 *   varint: number of extents, then each, from its 10-byte record:
 *     zigzag varint of its first block (in the page) less where the extent before it ended,
 *     varint count - 1, varint segment index + 1 (0: zeros), varint block in the segment.
 *
 * Packing then unpacking gives back the same bytes for any stored form, so a checkpoint's
 * comparison of stored pages is unchanged. A fragmented page written by 4 KiB random writes
 * takes about 5 bytes an extent and 11 a reference where the list-and-binary attributes
 * (`segs`, `ext`, still read) took 10 and about 45: fewer write units each time the page is
 * written. Items in the old attributes stay readable and are rewritten packed on their next write.
 */
import { invariant } from '../../core/errors.ts';
import { EXTENT_RECORD_BYTES, ZERO_SEGMENT_INDEX as ZERO_INDEX, type EncodedPage } from '../../data/extents.ts';
import { isSegmentId, segmentIdSeq } from '../../data/segments.ts';
import { segmentRef } from '../../core/records.ts';
import { unzigzag, VarintReader, VarintWriter, zigzag } from './varint.ts';

const PAGE_BYTES_FORMAT = 1;
const OWN_SEGMENT = 0;
const VERBATIM = 1;

/** Packs a stored page of volume `volumeId` for its item's `pg` attribute. */
export function packPage(volumeId: string, enc: EncodedPage): Uint8Array {
  invariant(enc.ext.length % EXTENT_RECORD_BYTES === 0, () => `extent bytes ${enc.ext.length} not a multiple of ${EXTENT_RECORD_BYTES}`);
  const w = new VarintWriter(16 + enc.segs.length * 12 + (enc.ext.length / EXTENT_RECORD_BYTES) * 8);
  w.byte(PAGE_BYTES_FORMAT);
  w.varint(enc.segs.length);
  const own = `${volumeId}/`;
  for (const ref of enc.segs) {
    const id = ref.startsWith(own) ? ref.slice(own.length) : '';
    if (isSegmentId(id)) {
      w.byte(OWN_SEGMENT);
      w.varint(segmentIdSeq(id));
      w.bytes(Buffer.from(id.slice(13), 'hex'));
    } else {
      const utf8 = Buffer.from(ref, 'utf8');
      w.byte(VERBATIM);
      w.varint(utf8.length);
      w.bytes(utf8);
    }
  }
  const view = new DataView(enc.ext.buffer, enc.ext.byteOffset, enc.ext.byteLength);
  const n = enc.ext.length / EXTENT_RECORD_BYTES;
  w.varint(n);
  let end = 0;
  for (let o = 0; o < enc.ext.length; o += EXTENT_RECORD_BYTES) {
    const first = view.getUint16(o);
    const countLess1 = view.getUint16(o + 2);
    const index = view.getUint16(o + 4);
    w.varint(zigzag(first - end));
    w.varint(countLess1);
    w.varint(index === ZERO_INDEX ? 0 : index + 1);
    w.varint(view.getUint32(o + 6));
    end = first + countLess1 + 1;
  }
  return w.done();
}

/** Unpacks a `pg` attribute of volume `volumeId` into the stored page it was packed from. */
export function unpackPage(volumeId: string, bytes: Uint8Array): EncodedPage {
  const r = new VarintReader(bytes, 'page bytes');
  const format = r.byte();
  invariant(format === PAGE_BYTES_FORMAT, () => `page bytes in format ${format}`);
  const segs: string[] = [];
  for (let i = r.varint(); i > 0; i--) {
    const kind = r.byte();
    if (kind === OWN_SEGMENT) {
      const seq = r.varint();
      segs.push(segmentRef(volumeId, `${String(seq).padStart(12, '0')}-${Buffer.from(r.bytes(4)).toString('hex')}`));
    } else {
      invariant(kind === VERBATIM, () => `page bytes: reference kind ${kind}`);
      segs.push(Buffer.from(r.bytes(r.varint())).toString('utf8'));
    }
  }
  const n = r.varint();
  const ext = new Uint8Array(n * EXTENT_RECORD_BYTES);
  const view = new DataView(ext.buffer);
  let end = 0;
  for (let o = 0; o < ext.length; o += EXTENT_RECORD_BYTES) {
    const first = end + unzigzag(r.varint());
    const countLess1 = r.varint();
    const index = r.varint();
    const segBlock = r.varint();
    // Each field back within its record's width (bytes that were never packed from records fail here).
    invariant(first >= 0 && first <= 0xffff && countLess1 <= 0xffff && index <= 0xffff && segBlock <= 0xffffffff, 'page bytes: extent field out of range');
    view.setUint16(o, first);
    view.setUint16(o + 2, countLess1);
    view.setUint16(o + 4, index === 0 ? ZERO_INDEX : index - 1);
    view.setUint32(o + 6, segBlock);
    end = first + countLess1 + 1;
  }
  invariant(r.atEnd(), 'page bytes: trailing bytes');
  return { segs, ext };
}
