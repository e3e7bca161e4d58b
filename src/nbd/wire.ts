// Owns the NBD wire format: magic numbers, option/command/flag constants and the pure encoders and decoders.
// Source: NetworkBlockDevice/nbd doc/proto.md (fixed newstyle negotiation, simple and structured replies).

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server) and client flags.
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

// Option replies.
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_TLS_REQD = 0x80000005;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;

// Info types.
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission flags.
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Commands and command flags.
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

// Structured reply types and flags.
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = 0x8001;

// base:allocation states.
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

export const BASE_ALLOCATION = 'base:allocation';

export const SERVER_GREETING_LENGTH = 18;
export const OPTION_HEADER_LENGTH = 16;
export const REQUEST_HEADER_LENGTH = 28;
export const SIMPLE_REPLY_HEADER_LENGTH = 16;
export const STRUCTURED_HEADER_LENGTH = 20;
/** Structured OFFSET_DATA chunk: header plus the 8-byte offset before the data. */
export const OFFSET_DATA_PREFIX_LENGTH = STRUCTURED_HEADER_LENGTH + 8;

export function encodeGreeting(): Buffer {
  const b = Buffer.allocUnsafe(SERVER_GREETING_LENGTH);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return b;
}

export interface OptionHeader {
  isMagicValid: boolean;
  option: number;
  length: number;
}

export function decodeOptionHeader(b: Buffer): OptionHeader {
  return { isMagicValid: b.readBigUInt64BE(0) === IHAVEOPT, option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

export function encodeOptionReply(option: number, replyType: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(20 + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(replyType, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

export function encodeInfoString(infoType: number, text: string): Buffer {
  const s = Buffer.from(text, 'utf8');
  const b = Buffer.allocUnsafe(2 + s.length);
  b.writeUInt16BE(infoType, 0);
  s.copy(b, 2);
  return b;
}

/** A length-prefixed string (u32 length, bytes), as NBD_REP_SERVER and queries carry. */
export function encodeLengthPrefixed(text: string): Buffer {
  const s = Buffer.from(text, 'utf8');
  const b = Buffer.allocUnsafe(4 + s.length);
  b.writeUInt32BE(s.length, 0);
  s.copy(b, 4);
  return b;
}

export function encodeMetaContext(contextId: number, name: string): Buffer {
  const s = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + s.length);
  b.writeUInt32BE(contextId, 0);
  s.copy(b, 4);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, transmissionFlags: number, hasNoZeroes: boolean): Buffer {
  const b = Buffer.alloc(hasNoZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export interface RequestHeader {
  isMagicValid: boolean;
  flags: number;
  type: number;
  /** The 8-byte cookie, echoed back untouched. */
  cookie: Buffer;
  offset: number;
  length: number;
  /** performance.now() when a streamed write began (its arrival, for metrics). */
  startedAt?: number;
}

/** Decodes a 28-byte request header. Offsets beyond 2^53 decode as Infinity and fail range checks. */
/** A request's 28-byte header, as a client sends it. */
export function encodeRequest(type: number, flags: number, cookie: bigint, offset: number | bigint, length: number): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

export function decodeRequestHeader(b: Buffer): RequestHeader {
  const high = b.readUInt32BE(16);
  const low = b.readUInt32BE(20);
  return {
    isMagicValid: b.readUInt32BE(0) === REQUEST_MAGIC,
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: Buffer.from(b.subarray(8, 16)),
    offset: high >= 0x200000 ? Infinity : high * 0x100000000 + low,
    length: b.readUInt32BE(24),
  };
}

export function writeSimpleReplyHeader(into: Buffer, at: number, error: number, cookie: Buffer): void {
  into.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  into.writeUInt32BE(error, at + 4);
  cookie.copy(into, at + 8);
}

export function writeStructuredHeader(into: Buffer, at: number, flags: number, type: number, cookie: Buffer, length: number): void {
  into.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  into.writeUInt16BE(flags, at + 4);
  into.writeUInt16BE(type, at + 6);
  cookie.copy(into, at + 8);
  into.writeUInt32BE(length, at + 16);
}

export function writeOffset(into: Buffer, at: number, offset: number): void {
  into.writeUInt32BE(Math.floor(offset / 0x100000000), at);
  into.writeUInt32BE(offset >>> 0, at + 4);
}

/** A structured NBD_REPLY_TYPE_ERROR chunk, final, with a human-readable message. */
export function encodeStructuredError(cookie: Buffer, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 1024), 'utf8');
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_LENGTH + 6 + text.length);
  writeStructuredHeader(b, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, 6 + text.length);
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(text.length, 24);
  text.copy(b, 26);
  return b;
}

/** A final NBD_REPLY_TYPE_BLOCK_STATUS chunk for one meta context. */
export function encodeBlockStatus(cookie: Buffer, contextId: number, extents: ReadonlyArray<{ length: number; flags: number }>, isLast = true): Buffer {
  const payload = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_LENGTH + payload);
  writeStructuredHeader(b, 0, isLast ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payload);
  b.writeUInt32BE(contextId, 20);
  let at = 24;
  for (const e of extents) {
    b.writeUInt32BE(e.length, at);
    b.writeUInt32BE(e.flags, at + 4);
    at += 8;
  }
  return b;
}
