/**
 * The NBD wire protocol, as much of it as the gateway speaks: the fixed newstyle handshake
 * (options EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT and
 * SET_META_CONTEXT with `base:allocation`; everything else gets NBD_REP_ERR_UNSUP) and the
 * transmission phase (READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES with FAST_ZERO, and
 * BLOCK_STATUS), with simple replies, or structured ones for READ and BLOCK_STATUS once
 * negotiated.
 *
 * Pure encoding, decoding and validation: no sockets, no I/O, so every rule here is unit
 * tested on bytes (test/unit/nbd-protocol.test.ts). Constants and layouts follow the
 * protocol document of the NBD project (doc/proto.md); all integers are big-endian.
 */

// ---------------------------------------------------------------------------------------
// Magic numbers

/** 'NBDMAGIC', the first 8 bytes the server sends. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT', sent by the server after NBDMAGIC and by the client before every option. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Prefix of every option reply from the server. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---------------------------------------------------------------------------------------
// Handshake flags (16 bits, server) and client flags (32 bits)

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---------------------------------------------------------------------------------------
// Transmission flags (16 bits, per export)

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---------------------------------------------------------------------------------------
// Options and option replies

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 2 ** 31;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---------------------------------------------------------------------------------------
// Commands, command flags, errors

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/** Structured reply chunks: the flag on the last chunk of a reply, and the chunk types. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = 2 ** 15 + 1;

/** The one metadata context served, and its flags: a hole that reads as zeros, or data. */
export const BASE_ALLOCATION = 'base:allocation';
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

// ---------------------------------------------------------------------------------------
// Sizes

export const GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
export const OPTION_HEADER_BYTES = 16;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
/** Option data larger than this is refused with a hard disconnect (names are at most 4 KiB). */
export const OPTION_DATA_MAX_BYTES = 64 * 1024;
/** The longest string the protocol allows (export names, descriptions, messages). */
export const STRING_MAX_BYTES = 4096;
/**
 * The largest READ or WRITE payload the gateway accepts: the protocol's interoperability
 * ceiling (2^25). Advertised as the maximum block size; a WRITE above it is a hard disconnect
 * because its payload could only be skipped by reading it.
 */
export const PAYLOAD_MAX_BYTES = 32 * 1024 * 1024;

/** The peer broke the protocol in a way that ends the connection (bad magic, bad flags). */
export class NbdProtocolError extends Error {
  override name = 'NbdProtocolError';
}

// ---------------------------------------------------------------------------------------
// Handshake

/** NBDMAGIC, IHAVEOPT and the handshake flags: the server's first 18 bytes. */
export function encodeGreeting(): Buffer {
  const b = Buffer.alloc(GREETING_BYTES);
  b.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return b;
}

export interface ClientFlags {
  fixedNewstyle: boolean;
  noZeroes: boolean;
}

/** The client's 32-bit flags. Unknown bits end the connection, as the protocol requires. */
export function decodeClientFlags(b: Buffer): ClientFlags {
  const flags = b.readUInt32BE(0);
  const known = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
  if ((flags & ~known) !== 0) throw new NbdProtocolError(`client flags 0x${flags.toString(16)} have bits this server did not offer`);
  return { fixedNewstyle: (flags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0, noZeroes: (flags & NBD_FLAG_C_NO_ZEROES) !== 0 };
}

export interface OptionHeader {
  option: number;
  length: number;
}

export function decodeOptionHeader(b: Buffer): OptionHeader {
  if (b.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) throw new NbdProtocolError('option does not start with IHAVEOPT');
  return { option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

/** One option reply: magic, the option it answers, the reply type, then `data`. */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

/** An error reply carrying a message for humans, cut to the protocol's string limit. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message, 'utf8').subarray(0, STRING_MAX_BYTES));
}

/** An NBD_REP_SERVER reply for NBD_OPT_LIST: the export name, then a description. */
export function encodeServerReply(name: string, description: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8').subarray(0, STRING_MAX_BYTES);
  const data = Buffer.alloc(4 + n.length + d.length);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  d.copy(data, 4 + n.length);
  return encodeOptionReply(NBD_OPT_LIST, NBD_REP_SERVER, data);
}

export interface InfoRequest {
  name: string;
  /** The NBD_INFO_* types the client asked for, in its order. */
  requests: number[];
}

/**
 * The data of NBD_OPT_INFO and NBD_OPT_GO: u32 name length, name, u16 count, u16 types.
 * Returns null when the data is malformed (the caller replies NBD_REP_ERR_INVALID).
 */
export function decodeInfoRequest(data: Buffer): InfoRequest | null {
  if (data.length < 6) return null;
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6 || nameBytes > STRING_MAX_BYTES) return null;
  const name = data.subarray(4, 4 + nameBytes).toString('utf8');
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 6 + nameBytes + 2 * count) return null;
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(6 + nameBytes + 2 * i));
  return { name, requests };
}

/** NBD_REP_INFO / NBD_INFO_EXPORT: export size and transmission flags. */
export function encodeInfoExport(option: number, sizeBytes: number, transmissionFlags: number): Buffer {
  const d = Buffer.alloc(12);
  d.writeUInt16BE(NBD_INFO_EXPORT, 0);
  d.writeBigUInt64BE(BigInt(sizeBytes), 2);
  d.writeUInt16BE(transmissionFlags, 10);
  return encodeOptionReply(option, NBD_REP_INFO, d);
}

export interface BlockSizes {
  minimumBytes: number;
  preferredBytes: number;
  maximumBytes: number;
}

/** NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum block size. */
export function encodeInfoBlockSize(option: number, sizes: BlockSizes): Buffer {
  const d = Buffer.alloc(14);
  d.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  d.writeUInt32BE(sizes.minimumBytes, 2);
  d.writeUInt32BE(sizes.preferredBytes, 6);
  d.writeUInt32BE(sizes.maximumBytes, 10);
  return encodeOptionReply(option, NBD_REP_INFO, d);
}

/** NBD_REP_INFO carrying a string (NBD_INFO_NAME or NBD_INFO_DESCRIPTION). */
export function encodeInfoString(option: number, infoType: number, text: string): Buffer {
  const s = Buffer.from(text, 'utf8').subarray(0, STRING_MAX_BYTES);
  const d = Buffer.alloc(2 + s.length);
  d.writeUInt16BE(infoType, 0);
  s.copy(d, 2);
  return encodeOptionReply(option, NBD_REP_INFO, d);
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeros unless NO_ZEROES. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export interface MetaContextRequest {
  name: string;
  queries: string[];
}

/**
 * The data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: u32 name length, name,
 * u32 query count, then each query as u32 length and string. Null when malformed.
 */
export function decodeMetaContextRequest(data: Buffer): MetaContextRequest | null {
  if (data.length < 8) return null;
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > STRING_MAX_BYTES || 4 + nameBytes + 4 > data.length) return null;
  const name = data.subarray(4, 4 + nameBytes).toString('utf8');
  let pos = 4 + nameBytes;
  const count = data.readUInt32BE(pos);
  pos += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (pos + 4 > data.length) return null;
    const n = data.readUInt32BE(pos);
    pos += 4;
    if (n > STRING_MAX_BYTES || pos + n > data.length) return null;
    queries.push(data.subarray(pos, pos + n).toString('utf8'));
    pos += n;
  }
  return pos === data.length ? { name, queries } : null;
}

/** NBD_REP_META_CONTEXT: the context's id (0 in answers to LIST) and name. */
export function encodeMetaContextReply(option: number, id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.alloc(4 + n.length);
  d.writeUInt32BE(id, 0);
  n.copy(d, 4);
  return encodeOptionReply(option, NBD_REP_META_CONTEXT, d);
}

// ---------------------------------------------------------------------------------------
// Transmission

export interface NbdRequest {
  flags: number;
  type: number;
  /** The client's 8-byte handle, echoed verbatim in the reply. */
  handle: Buffer;
  /** Byte offset; offsets beyond 2^53 are clamped to MAX_SAFE_INTEGER (always out of range). */
  offset: number;
  length: number;
}

export function decodeRequest(b: Buffer): NbdRequest {
  const magic = b.readUInt32BE(0);
  if (magic !== NBD_REQUEST_MAGIC) throw new NbdProtocolError(`request magic 0x${magic.toString(16)} is not 0x${NBD_REQUEST_MAGIC.toString(16)}`);
  const offset = b.readBigUInt64BE(16);
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    handle: Buffer.from(b.subarray(8, 16)),
    offset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offset),
    length: b.readUInt32BE(24),
  };
}

/** Encodes a request (used by tests and tools that act as a client). */
export function encodeRequest(r: { flags?: number; type: number; handle: Buffer; offset: number; length: number }): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_BYTES);
  b.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags ?? 0, 4);
  b.writeUInt16BE(r.type, 6);
  r.handle.copy(b, 8, 0, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

/** A simple reply header; READ data (when `error` is 0) follows it on the wire. */
export function encodeSimpleReply(error: number, handle: Buffer): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_BYTES);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  handle.copy(b, 8, 0, 8);
  return b;
}

/** A structured reply chunk header; `payloadBytes` of payload follow it on the wire. */
export function encodeChunkHeader(flags: number, type: number, handle: Buffer, payloadBytes: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  handle.copy(b, 8, 0, 8);
  b.writeUInt32BE(payloadBytes, 16);
  return b;
}

/** The header and offset of a final NBD_REPLY_TYPE_OFFSET_DATA chunk; the data follows. */
export function encodeOffsetDataHeader(handle: Buffer, offset: number, dataBytes: number): Buffer {
  const b = Buffer.alloc(28);
  encodeChunkHeader(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, handle, 8 + dataBytes).copy(b, 0);
  b.writeBigUInt64BE(BigInt(offset), 20);
  return b;
}

/** A final NBD_REPLY_TYPE_ERROR chunk: the error and a message for humans. */
export function encodeStructuredError(handle: Buffer, error: number, message: string): Buffer {
  const m = Buffer.from(message, 'utf8').subarray(0, STRING_MAX_BYTES);
  const payload = Buffer.alloc(6 + m.length);
  payload.writeUInt32BE(error, 0);
  payload.writeUInt16BE(m.length, 4);
  m.copy(payload, 6);
  return Buffer.concat([encodeChunkHeader(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, handle, payload.length), payload]);
}

/** A final NBD_REPLY_TYPE_BLOCK_STATUS chunk: the context id, then (length, flags) descriptors. */
export function encodeBlockStatus(handle: Buffer, contextId: number, descriptors: ReadonlyArray<{ length: number; flags: number }>): Buffer {
  const payload = Buffer.alloc(4 + 8 * descriptors.length);
  payload.writeUInt32BE(contextId, 0);
  descriptors.forEach((d, i) => {
    payload.writeUInt32BE(d.length, 4 + 8 * i);
    payload.writeUInt32BE(d.flags, 8 + 8 * i);
  });
  return Buffer.concat([encodeChunkHeader(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, handle, payload.length), payload]);
}

/** The command flags each command may carry, given the transmission flags we advertise. */
const ALLOWED_FLAGS: Record<number, number> = {
  // FUA is valid on every command once SEND_FUA is advertised (clients are known to set it
  // on reads and flushes too); it only has an effect on commands that write.
  [NBD_CMD_READ]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_DISC]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_FLUSH]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_CACHE]: NBD_CMD_FLAG_FUA,
  // FAST_ZERO: zeroing is always fast here (a zero extent, no data written), so never refused.
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
  [NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
};

export interface ExportLimits {
  sizeBytes: number;
  readOnly: boolean;
  /** The client negotiated structured replies and selected base:allocation: BLOCK_STATUS is allowed. */
  blockStatus?: boolean;
}

/**
 * Checks a request against the export: known command, allowed flags, length and range.
 * Returns 0 when it may be served, else the NBD error to reply with. Pure; the server calls
 * it before touching the cache, so a bad request changes nothing.
 */
export function requestError(r: NbdRequest, limits: ExportLimits): number {
  const allowed = ALLOWED_FLAGS[r.type];
  if (allowed === undefined) return NBD_EINVAL; // An unknown command.
  if ((r.flags & ~allowed) !== 0) return NBD_EINVAL;
  if (r.type === NBD_CMD_DISC || r.type === NBD_CMD_FLUSH) return r.offset === 0 && r.length === 0 ? 0 : NBD_EINVAL;
  if (r.type === NBD_CMD_BLOCK_STATUS && !limits.blockStatus) return NBD_EINVAL;
  const writes = r.type !== NBD_CMD_READ && r.type !== NBD_CMD_BLOCK_STATUS && r.type !== NBD_CMD_CACHE;
  if (writes && limits.readOnly) return NBD_EPERM;
  if (r.length === 0) return NBD_EINVAL;
  if ((r.type === NBD_CMD_READ || r.type === NBD_CMD_WRITE) && r.length > PAYLOAD_MAX_BYTES) return NBD_EINVAL;
  // Past the end: ENOSPC for commands that write, as the protocol recommends; EINVAL for reads.
  if (r.offset > limits.sizeBytes || r.length > limits.sizeBytes - r.offset) return writes ? NBD_ENOSPC : NBD_EINVAL;
  return 0;
}

/** Names for logs and messages. */
export function commandName(type: number): string {
  return (
    { [NBD_CMD_READ]: 'READ', [NBD_CMD_WRITE]: 'WRITE', [NBD_CMD_DISC]: 'DISC', [NBD_CMD_FLUSH]: 'FLUSH', [NBD_CMD_TRIM]: 'TRIM', [NBD_CMD_CACHE]: 'CACHE', [NBD_CMD_WRITE_ZEROES]: 'WRITE_ZEROES', [NBD_CMD_BLOCK_STATUS]: 'BLOCK_STATUS' }[type] ??
    `command ${type}`
  );
}
