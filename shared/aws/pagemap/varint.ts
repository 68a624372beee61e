/**
 * LEB128 varints (unsigned, up to 2^53) and zigzag signs, for the page map's packed binary
 * attributes: a segment record's `ext` (items.ts) and a page item's `pg` (page-bytes.ts).
 */
import { invariant } from '../../core/errors.ts';

/** A signed number as an unsigned one: 0, -1, 1, -2, ... become 0, 1, 2, 3, ... */
export function zigzag(n: number): number {
  return n < 0 ? -2 * n - 1 : 2 * n;
}

export function unzigzag(n: number): number {
  return n % 2 === 1 ? -(n + 1) / 2 : n / 2;
}

/** Varints and raw bytes into a buffer that grows as needed (an estimate that holds avoids any growth). */
export class VarintWriter {
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
  /** The bytes written, in a buffer of their own. */
  done(): Uint8Array {
    return new Uint8Array(this.buf.subarray(0, this.o));
  }
}

/** Reads what a VarintWriter wrote; `what` names the bytes in errors ("page bytes end early"). */
export class VarintReader {
  private o: number;
  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
    from = 0,
  ) {
    this.o = from;
  }
  byte(): number {
    invariant(this.o < this.buf.length, () => `${this.what} end early`);
    return this.buf[this.o++]!;
  }
  varint(): number {
    let v = 0;
    for (let scale = 1; ; scale *= 128) {
      const b = this.byte();
      v += (b & 127) * scale;
      if (b < 128) return v;
      invariant(scale < 2 ** 49, () => `${this.what}: varint too long`);
    }
  }
  bytes(n: number): Uint8Array {
    invariant(this.o + n <= this.buf.length, () => `${this.what} end early`);
    const out = this.buf.subarray(this.o, this.o + n);
    this.o += n;
    return out;
  }
  atEnd(): boolean {
    return this.o === this.buf.length;
  }
}
