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
import { isSegmentId } from '../../data/segments.ts';

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
      w.varint(Number(id.slice(0, 12)));
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
  const r = new VarintReader(bytes);
  const format = r.byte();
  invariant(format === PAGE_BYTES_FORMAT, () => `page bytes in format ${format}`);
  const segs: string[] = [];
  for (let i = r.varint(); i > 0; i--) {
    const kind = r.byte();
    if (kind === OWN_SEGMENT) {
      const seq = r.varint();
      segs.push(`${volumeId}/${String(seq).padStart(12, '0')}-${Buffer.from(r.bytes(4)).toString('hex')}`);
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

function zigzag(n: number): number {
  return n < 0 ? -2 * n - 1 : 2 * n;
}

function unzigzag(n: number): number {
  return n % 2 === 1 ? -(n + 1) / 2 : n / 2;
}

/** LEB128 varints (unsigned, up to 2^53) and raw bytes into a buffer that grows as needed. */
class VarintWriter {
  private buf: Buffer;
  private o = 0;
  constructor(estimate: number) {
    this.buf = Buffer.allocUnsafe(Math.max(16, estimate));
  }
  private room(n: number): void {
    if (this.o + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.o + n));
    this.buf.copy(next, 0, 0, this.o);
    this.buf = next;
  }
  byte(b: number): void {
    this.room(1);
    this.buf[this.o++] = b;
  }
  varint(v: number): void {
    invariant(Number.isSafeInteger(v) && v >= 0, () => `varint ${v}`);
    this.room(8);
    while (v >= 128) {
      this.buf[this.o++] = (v % 128) | 128;
      v = Math.floor(v / 128);
    }
    this.buf[this.o++] = v;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.o);
    this.o += b.length;
  }
  done(): Uint8Array {
    return new Uint8Array(this.buf.subarray(0, this.o));
  }
}

class VarintReader {
  private o = 0;
  constructor(private readonly buf: Uint8Array) {}
  byte(): number {
    invariant(this.o < this.buf.length, 'page bytes end early');
    return this.buf[this.o++]!;
  }
  varint(): number {
    let v = 0;
    for (let scale = 1; ; scale *= 128) {
      const b = this.byte();
      v += (b & 127) * scale;
      if (b < 128) return v;
      invariant(scale < 2 ** 49, 'page bytes: varint too long');
    }
  }
  bytes(n: number): Uint8Array {
    invariant(this.o + n <= this.buf.length, 'page bytes end early');
    const out = this.buf.subarray(this.o, this.o + n);
    this.o += n;
    return out;
  }
  atEnd(): boolean {
    return this.o === this.buf.length;
  }
}
