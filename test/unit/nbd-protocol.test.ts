import { describe, expect, it } from 'vitest';
import {
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  NbdProtocolError,
  PAYLOAD_MAX_BYTES,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  encodeBlockStatus,
  encodeMetaContextReply,
  encodeOffsetDataHeader,
  encodeStructuredError,
  decodeOptionHeader,
  decodeRequest,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeRequest,
  encodeServerReply,
  encodeSimpleReply,
  requestError,
  NBD_CMD_CACHE,
} from '#gateway/protocol.ts';
import { TRANSMISSION_FLAGS } from '#gateway/server.ts';

const handle = Buffer.from('0102030405060708', 'hex');

function infoRequestData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(6 + n.length + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

describe('NBD handshake encoding', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE | NO_ZEROES', () => {
    const g = encodeGreeting();
    expect(g.length).toBe(18);
    expect(g.subarray(0, 8).toString('ascii')).toBe('NBDMAGIC');
    expect(g.subarray(8, 16).toString('ascii')).toBe('IHAVEOPT');
    expect(g.readUInt16BE(16)).toBe(0b11);
  });

  it('accepts the two known client flags and refuses any other bit', () => {
    const flags = (n: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(n);
      return b;
    };
    expect(decodeClientFlags(flags(0))).toEqual({ fixedNewstyle: false, noZeroes: false });
    expect(decodeClientFlags(flags(3))).toEqual({ fixedNewstyle: true, noZeroes: true });
    expect(() => decodeClientFlags(flags(4))).toThrow(NbdProtocolError);
    expect(() => decodeClientFlags(flags(0x80000001))).toThrow(NbdProtocolError);
  });

  it('parses option headers and refuses a wrong magic', () => {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'ascii');
    h.writeUInt32BE(NBD_OPT_GO, 8);
    h.writeUInt32BE(12, 12);
    expect(decodeOptionHeader(h)).toEqual({ option: NBD_OPT_GO, length: 12 });
    h.write('IHAVEOPX', 0, 'ascii');
    expect(() => decodeOptionHeader(h)).toThrow(NbdProtocolError);
  });

  it('lays out option replies: magic 0x3e889045565a9, option, type, length, data', () => {
    const r = encodeOptionReply(NBD_OPT_GO, 1, Buffer.from('ab'));
    expect(r.toString('hex')).toBe('0003e889045565a9' + '00000007' + '00000001' + '00000002' + '6162');
  });

  it('uses the error reply values of the protocol (bit 31 set)', () => {
    expect(NBD_REP_ERR_UNSUP).toBe(0x80000001);
    expect(NBD_REP_ERR_INVALID).toBe(0x80000003);
    expect(NBD_REP_ERR_UNKNOWN).toBe(0x80000006);
    expect(NBD_REP_ERR_SHUTDOWN).toBe(0x80000007);
    expect(NBD_REP_ERR_TOO_BIG).toBe(0x80000009);
    expect(NBD_REP_ERR_BLOCK_SIZE_REQD).toBe(0x80000008);
  });

  it('answers NBD_OPT_LIST with the export name and a description', () => {
    const r = encodeServerReply('vol-1', 'desc');
    expect(r.readUInt32BE(8)).toBe(NBD_OPT_LIST);
    expect(r.readUInt32BE(12)).toBe(NBD_REP_SERVER);
    expect(r.readUInt32BE(16)).toBe(4 + 5 + 4);
    expect(r.readUInt32BE(20)).toBe(5);
    expect(r.subarray(24).toString()).toBe('vol-1desc');
  });

  it('parses NBD_OPT_INFO/GO data and rejects malformed data', () => {
    expect(decodeInfoRequest(infoRequestData('vol-1', [NBD_INFO_BLOCK_SIZE, 1]))).toEqual({ name: 'vol-1', requests: [3, 1] });
    expect(decodeInfoRequest(infoRequestData('', []))).toEqual({ name: '', requests: [] });
    expect(decodeInfoRequest(Buffer.alloc(5))).toBeNull();
    const longName = infoRequestData('x', [1]);
    longName.writeUInt32BE(1000, 0); // name length beyond the data
    expect(decodeInfoRequest(longName)).toBeNull();
    const extra = Buffer.concat([infoRequestData('x', [1]), Buffer.alloc(1)]); // trailing byte
    expect(decodeInfoRequest(extra)).toBeNull();
  });

  it('encodes NBD_INFO_EXPORT (length 12) and NBD_INFO_BLOCK_SIZE (length 14)', () => {
    const e = encodeInfoExport(NBD_OPT_GO, 64 * 1024 * 1024, TRANSMISSION_FLAGS);
    expect(e.readUInt32BE(12)).toBe(NBD_REP_INFO);
    expect(e.readUInt32BE(16)).toBe(12);
    expect(e.readUInt16BE(20)).toBe(NBD_INFO_EXPORT);
    expect(e.readBigUInt64BE(22)).toBe(64n * 1024n * 1024n);
    expect(e.readUInt16BE(30)).toBe(TRANSMISSION_FLAGS);
    const b = encodeInfoBlockSize(NBD_OPT_GO, { minimumBytes: 4096, preferredBytes: 4096, maximumBytes: PAYLOAD_MAX_BYTES });
    expect(b.readUInt32BE(16)).toBe(14);
    expect(b.readUInt16BE(20)).toBe(NBD_INFO_BLOCK_SIZE);
    expect([b.readUInt32BE(22), b.readUInt32BE(26), b.readUInt32BE(30)]).toEqual([4096, 4096, 32 * 1024 * 1024]);
    const s = encodeInfoString(NBD_OPT_GO, 2, 'hello');
    expect(s.readUInt32BE(16)).toBe(7);
    expect(s.subarray(22).toString()).toBe('hello');
  });

  it('ends NBD_OPT_EXPORT_NAME with 124 zero bytes unless NO_ZEROES was agreed', () => {
    expect(encodeExportNameReply(8192, 1, false).length).toBe(8 + 2 + 124);
    const r = encodeExportNameReply(8192, 0x13d, true);
    expect(r.length).toBe(10);
    expect(r.readBigUInt64BE(0)).toBe(8192n);
    expect(r.readUInt16BE(8)).toBe(0x13d);
  });

  it('advertises exactly flush, FUA, trim, write-zeroes, multi-conn, cache and fast zero', () => {
    // HAS_FLAGS(0) SEND_FLUSH(2) SEND_FUA(3) SEND_TRIM(5) SEND_WRITE_ZEROES(6) CAN_MULTI_CONN(8) SEND_CACHE(10) SEND_FAST_ZERO(11)
    expect(TRANSMISSION_FLAGS).toBe((1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 11));
  });

  it('decodes metadata context requests and refuses malformed ones', () => {
    const q = (name: string, queries: string[]) => {
      const parts = [Buffer.alloc(4), Buffer.from(name)];
      parts[0]!.writeUInt32BE(Buffer.byteLength(name));
      const count = Buffer.alloc(4);
      count.writeUInt32BE(queries.length);
      parts.push(count);
      for (const x of queries) {
        const l = Buffer.alloc(4);
        l.writeUInt32BE(Buffer.byteLength(x));
        parts.push(l, Buffer.from(x));
      }
      return Buffer.concat(parts);
    };
    expect(decodeMetaContextRequest(q('vol-1', ['base:allocation', 'qemu:dirty-bitmap:x']))).toEqual({ name: 'vol-1', queries: ['base:allocation', 'qemu:dirty-bitmap:x'] });
    expect(decodeMetaContextRequest(q('', []))).toEqual({ name: '', queries: [] });
    expect(decodeMetaContextRequest(q('v', ['base:allocation']).subarray(0, 12))).toBeNull();
    expect(decodeMetaContextRequest(Buffer.concat([q('v', []), Buffer.from([0])]))).toBeNull();
    const r = encodeMetaContextReply(NBD_OPT_GO, 1, 'base:allocation');
    expect(r.readUInt32BE(12)).toBe(4); // NBD_REP_META_CONTEXT
    expect(r.readUInt32BE(20)).toBe(1);
    expect(r.subarray(24).toString()).toBe('base:allocation');
  });
});

describe('NBD transmission encoding', () => {
  it('round-trips a request and keeps the handle verbatim', () => {
    const b = encodeRequest({ flags: NBD_CMD_FLAG_FUA, type: NBD_CMD_WRITE, handle, offset: 2 ** 40, length: 4096 });
    expect(b.length).toBe(28);
    expect(b.readUInt32BE(0)).toBe(0x25609513);
    expect(decodeRequest(b)).toEqual({ flags: 1, type: 1, handle, offset: 2 ** 40, length: 4096 });
  });

  it('refuses a request with a wrong magic', () => {
    const b = encodeRequest({ type: NBD_CMD_READ, handle, offset: 0, length: 512 });
    b.writeUInt32BE(0x12560953, 0); // the historic magic is reserved, not accepted
    expect(() => decodeRequest(b)).toThrow(NbdProtocolError);
  });

  it('clamps offsets beyond 2^53 so that they are always out of range', () => {
    const b = encodeRequest({ type: NBD_CMD_READ, handle, offset: 0, length: 512 });
    b.writeBigUInt64BE(2n ** 64n - 1n, 16);
    const r = decodeRequest(b);
    expect(r.offset).toBe(Number.MAX_SAFE_INTEGER);
    expect(requestError(r, { sizeBytes: 1 << 20, readOnly: false })).toBe(NBD_EINVAL);
  });

  it('lays out simple replies: magic 0x67446698, error, handle', () => {
    expect(encodeSimpleReply(22, handle).toString('hex')).toBe('67446698' + '00000016' + '0102030405060708');
  });

  it('lays out structured chunks: read data, errors and block status, each flagged DONE', () => {
    const d = encodeOffsetDataHeader(handle, 4096, 512);
    expect(d.toString('hex')).toBe('668e33ef' + '0001' + '0001' + '0102030405060708' + '00000208' + '0000000000001000');
    const e = encodeStructuredError(handle, 5, 'no');
    expect(e.toString('hex')).toBe('668e33ef' + '0001' + '8001' + '0102030405060708' + '00000008' + '00000005' + '0002' + '6e6f');
    const b = encodeBlockStatus(handle, 1, [
      { length: 8192, flags: 0 },
      { length: 4096, flags: 3 },
    ]);
    expect(b.toString('hex')).toBe('668e33ef' + '0001' + '0005' + '0102030405060708' + '00000014' + '00000001' + '00002000' + '00000000' + '00001000' + '00000003');
  });
});

describe('request validation', () => {
  const limits = { sizeBytes: 64 * 1024 * 1024, readOnly: false };
  const req = (type: number, offset: number, length: number, flags = 0) => ({ type, offset, length, flags, handle });

  it('accepts well-formed commands, FUA on any of them, NO_HOLE on write-zeroes', () => {
    expect(requestError(req(NBD_CMD_READ, 0, 4096), limits)).toBe(0);
    expect(requestError(req(NBD_CMD_READ, 0, 4096, NBD_CMD_FLAG_FUA), limits)).toBe(0);
    expect(requestError(req(NBD_CMD_WRITE, limits.sizeBytes - 512, 512, NBD_CMD_FLAG_FUA), limits)).toBe(0);
    expect(requestError(req(NBD_CMD_FLUSH, 0, 0, NBD_CMD_FLAG_FUA), limits)).toBe(0);
    expect(requestError(req(NBD_CMD_TRIM, 0, limits.sizeBytes), limits)).toBe(0);
    expect(requestError(req(NBD_CMD_WRITE_ZEROES, 100, 1000, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA), limits)).toBe(0);
    expect(requestError(req(NBD_CMD_DISC, 0, 0), limits)).toBe(0);
    // CACHE: any length (it is not a payload), allowed on read-only exports, EINVAL past the end like a read.
    expect(requestError(req(NBD_CMD_CACHE, 0, PAYLOAD_MAX_BYTES * 2), limits)).toBe(0);
    expect(requestError(req(NBD_CMD_CACHE, 0, 4096), { ...limits, readOnly: true })).toBe(0);
    expect(requestError(req(NBD_CMD_CACHE, limits.sizeBytes - 512, 1024), limits)).toBe(NBD_EINVAL);
    expect(requestError(req(NBD_CMD_CACHE, 0, 0), limits)).toBe(NBD_EINVAL);
  });

  it('refuses unknown commands and flags not allowed for the command with EINVAL', () => {
    expect(requestError(req(NBD_CMD_BLOCK_STATUS, 0, 4096), limits), 'block status without base:allocation negotiated').toBe(NBD_EINVAL);
    expect(requestError(req(NBD_CMD_BLOCK_STATUS, 0, 4096, NBD_CMD_FLAG_REQ_ONE), { ...limits, blockStatus: true })).toBe(0);
    expect(requestError(req(NBD_CMD_BLOCK_STATUS, limits.sizeBytes, 4096), { ...limits, blockStatus: true })).toBe(NBD_EINVAL);
    expect(requestError(req(42, 0, 4096), limits)).toBe(NBD_EINVAL);
    expect(requestError(req(NBD_CMD_WRITE, 0, 4096, NBD_CMD_FLAG_NO_HOLE), limits)).toBe(NBD_EINVAL);
    expect(requestError(req(NBD_CMD_WRITE_ZEROES, 0, 4096, NBD_CMD_FLAG_FAST_ZERO), limits), 'FAST_ZERO is advertised and never refused').toBe(0);
    expect(requestError(req(NBD_CMD_WRITE, 0, 4096, NBD_CMD_FLAG_FAST_ZERO), limits)).toBe(NBD_EINVAL);
    expect(requestError(req(NBD_CMD_READ, 0, 4096, 1 << 15), limits)).toBe(NBD_EINVAL);
  });

  it('refuses empty lengths, non-zero FLUSH fields and reads over the payload limit', () => {
    expect(requestError(req(NBD_CMD_WRITE, 0, 0), limits)).toBe(NBD_EINVAL);
    expect(requestError(req(NBD_CMD_FLUSH, 0, 4096), limits)).toBe(NBD_EINVAL);
    expect(requestError(req(NBD_CMD_READ, 0, PAYLOAD_MAX_BYTES + 1), limits)).toBe(NBD_EINVAL);
    expect(requestError(req(NBD_CMD_READ, 0, PAYLOAD_MAX_BYTES), limits)).toBe(0);
  });

  it('answers ENOSPC for writes past the end and EINVAL for reads past it', () => {
    expect(requestError(req(NBD_CMD_WRITE, limits.sizeBytes - 512, 1024), limits)).toBe(NBD_ENOSPC);
    expect(requestError(req(NBD_CMD_TRIM, limits.sizeBytes, 1), limits)).toBe(NBD_ENOSPC);
    expect(requestError(req(NBD_CMD_WRITE_ZEROES, limits.sizeBytes + 4096, 4096), limits)).toBe(NBD_ENOSPC);
    expect(requestError(req(NBD_CMD_READ, limits.sizeBytes - 512, 1024), limits)).toBe(NBD_EINVAL);
  });

  it('refuses writes to a read-only export with EPERM', () => {
    expect(requestError(req(NBD_CMD_WRITE, 0, 512), { ...limits, readOnly: true })).toBe(NBD_EPERM);
    expect(requestError(req(NBD_CMD_READ, 0, 512), { ...limits, readOnly: true })).toBe(0);
  });
});
