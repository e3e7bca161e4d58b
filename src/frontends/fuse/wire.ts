// Owns the FUSE kernel protocol's numbers and byte layouts (linux/fuse.h, protocol 7.x): nothing else.

export const FUSE_KERNEL_VERSION = 7;
/** The newest minor version whose layouts this file writes (init_out is 64 bytes from 7.23 on). */
export const FUSE_KERNEL_MINOR_VERSION = 38;
export const FUSE_ROOT_ID = 1;

export const Opcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  GETXATTR: 22,
  LISTXATTR: 23,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  LSEEK: 46,
  SYNCFS: 50,
} as const;

/** init flags (fuse_init_in/out.flags). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  BIG_WRITES: 1 << 5,
  ASYNC_DIO: 1 << 15,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
  INIT_EXT: 1 << 30,
} as const;

/** init flags2 (bit n stands for 1 << (32 + n) of the 64-bit flags): requests through io_uring (6.14+). */
export const InitFlag2 = {
  OVER_IO_URING: 1 << 9,
} as const;

/** open_out.open_flags. */
export const OpenFlag = {
  DIRECT_IO: 1 << 0,
  PARALLEL_DIRECT_WRITES: 1 << 6,
} as const;

/** setattr_in.valid bits. */
export const FATTR_SIZE = 1 << 3;

/** fallocate modes (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

export const IN_HEADER_LENGTH = 40;
export const OUT_HEADER_LENGTH = 16;
/** Room the kernel wants beyond max_write in every read buffer (libfuse's FUSE_BUFFER_HEADER_SIZE). */
export const BUFFER_HEADER_ROOM = 4096;
/** fuse_read_in / fuse_write_in: fh, offset, size, flags, lock_owner, flags, padding. */
export const IO_IN_LENGTH = 40;
export const WRITE_PAYLOAD_OFFSET = IN_HEADER_LENGTH + IO_IN_LENGTH;

export interface InHeader {
  length: number;
  opcode: number;
  unique: bigint;
  nodeId: number;
}

export function readInHeader(b: Buffer): InHeader {
  return { length: b.readUInt32LE(0), opcode: b.readUInt32LE(4), unique: b.readBigUInt64LE(8), nodeId: Number(b.readBigUInt64LE(16)) };
}

/** fuse_out_header: length, -errno (0 for success), unique. */
export function writeOutHeader(b: Buffer, length: number, negativeErrno: number, unique: bigint): void {
  b.writeUInt32LE(length, 0);
  b.writeInt32LE(negativeErrno, 4);
  b.writeBigUInt64LE(unique, 8);
}

/** READ, WRITE and READDIR arguments (same leading layout), after the in header or at `at` (a ring header's op_in). */
export function readIoIn(b: Buffer, at: number = IN_HEADER_LENGTH): { offset: number; size: number } {
  // Two 32-bit reads, not a BigInt: this runs for every READ and WRITE.
  return { offset: b.readUInt32LE(at + 8) + b.readUInt32LE(at + 12) * 2 ** 32, size: b.readUInt32LE(at + 16) };
}

export interface InitIn {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  /** The second flag word (valid with INIT_EXT). */
  flags2: number;
}

export function readInitIn(b: Buffer): InitIn {
  const at = IN_HEADER_LENGTH;
  const flags = b.readUInt32LE(at + 12);
  const flags2 = flags & InitFlag.INIT_EXT ? b.readUInt32LE(at + 16) : 0;
  return { major: b.readUInt32LE(at), minor: b.readUInt32LE(at + 4), maxReadahead: b.readUInt32LE(at + 8), flags, flags2 };
}

export interface InitOut {
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  maxPages: number;
  flags2: number;
}

/** fuse_init_out: 64 bytes (24 for kernels before 7.23, which this daemon does not serve). */
export function encodeInitOut(o: InitOut): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  b.writeUInt32LE(o.minor, 4);
  b.writeUInt32LE(o.maxReadahead, 8);
  b.writeUInt32LE(o.flags >>> 0, 12);
  b.writeUInt16LE(o.maxBackground, 16);
  b.writeUInt16LE(o.congestionThreshold, 18);
  b.writeUInt32LE(o.maxWrite, 20);
  b.writeUInt32LE(1, 24); // time_gran: nanoseconds
  b.writeUInt16LE(o.maxPages, 28);
  b.writeUInt32LE(o.flags2 >>> 0, 32);
  return b;
}

export interface Attr {
  ino: number;
  size: number;
  mode: number;
  nlink: number;
  mtimeSeconds: number;
}

const ATTR_LENGTH = 88;

function writeAttr(b: Buffer, at: number, a: Attr): void {
  b.writeBigUInt64LE(BigInt(a.ino), at);
  b.writeBigUInt64LE(BigInt(a.size), at + 8);
  b.writeBigUInt64LE(BigInt(Math.ceil(a.size / 512)), at + 16);
  for (const field of [24, 32, 40]) b.writeBigUInt64LE(BigInt(a.mtimeSeconds), at + field);
  b.writeUInt32LE(a.mode, at + 60);
  b.writeUInt32LE(a.nlink, at + 64);
  b.writeUInt32LE(4096, at + 80); // blksize
}

/** fuse_entry_out: nodeid, generation, entry and attribute validity, attributes. */
export function encodeEntryOut(a: Attr, validSeconds: number): Buffer {
  const b = Buffer.alloc(40 + ATTR_LENGTH);
  b.writeBigUInt64LE(BigInt(a.ino), 0);
  b.writeBigUInt64LE(BigInt(validSeconds), 16);
  b.writeBigUInt64LE(BigInt(validSeconds), 24);
  writeAttr(b, 40, a);
  return b;
}

/** fuse_attr_out: validity, attributes. */
export function encodeAttrOut(a: Attr, validSeconds: number): Buffer {
  const b = Buffer.alloc(16 + ATTR_LENGTH);
  b.writeBigUInt64LE(BigInt(validSeconds), 0);
  writeAttr(b, 16, a);
  return b;
}

/** fuse_open_out: file handle, open flags. */
export function encodeOpenOut(openFlags: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(openFlags, 8);
  return b;
}

/** fuse_statfs_out (fuse_kstatfs): a filesystem of one file, `size` bytes in 4 KiB blocks. */
export function encodeStatfsOut(size: number): Buffer {
  const b = Buffer.alloc(80);
  b.writeBigUInt64LE(BigInt(Math.ceil(size / 4096)), 0);
  b.writeBigUInt64LE(2n, 24); // files
  b.writeUInt32LE(4096, 40); // bsize
  b.writeUInt32LE(255, 44); // namelen
  b.writeUInt32LE(4096, 48); // frsize
  return b;
}

/** Directory entries from index `from` on (fuse_dirent, each padded to 8 bytes), at most `maximum` bytes. */
export function encodeDirents(entries: ReadonlyArray<{ ino: number; name: string; type: number }>, from: number, maximum: number): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = from; i < entries.length; i++) {
    const e = entries[i] as { ino: number; name: string; type: number };
    const name = Buffer.from(e.name);
    const length = (24 + name.length + 7) & ~7;
    if (total + length > maximum) break;
    const d = Buffer.alloc(length);
    d.writeBigUInt64LE(BigInt(e.ino), 0);
    d.writeBigUInt64LE(BigInt(i + 1), 8); // the offset of the next entry
    d.writeUInt32LE(name.length, 16);
    d.writeUInt32LE(e.type, 20);
    name.copy(d, 24);
    parts.push(d);
    total += length;
  }
  return Buffer.concat(parts, total);
}

export function readSetattrIn(b: Buffer): { valid: number; size: number } {
  return { valid: b.readUInt32LE(IN_HEADER_LENGTH), size: Number(b.readBigUInt64LE(IN_HEADER_LENGTH + 16)) };
}

export function readOpenIn(b: Buffer): { flags: number } {
  return { flags: b.readUInt32LE(IN_HEADER_LENGTH) };
}

export function readFallocateIn(b: Buffer): { offset: number; length: number; mode: number } {
  const at = IN_HEADER_LENGTH;
  return { offset: Number(b.readBigUInt64LE(at + 8)), length: Number(b.readBigUInt64LE(at + 16)), mode: b.readUInt32LE(at + 24) };
}

/** A LOOKUP's name: NUL-terminated after the header. */
export function readName(b: Buffer, length: number): string {
  const end = b.indexOf(0, IN_HEADER_LENGTH);
  return b.toString('utf8', IN_HEADER_LENGTH, end < 0 || end > length ? length : end);
}

/**
 * FUSE over io_uring (linux/fuse.h, 7.42): each ring entry is a header (fuse_uring_req_header: the
 * in/out header, the op's first argument, then fuse_uring_ent_in_out) and a payload buffer holding
 * the request's further arguments and, on the way back, the reply's arguments.
 */
export const Ring = {
  headerBytes: 288,
  opInOffset: 128,
  commitIdOffset: 256 + 8,
  payloadSizeOffset: 256 + 16,
  commandRegister: 1,
  commandCommitAndFetch: 2,
} as const;

/** The size of each opcode's first argument (its fixed `*_in` struct); 0 where it has none. */
export function opInLength(opcode: number): number {
  switch (opcode) {
    case Opcode.READ:
    case Opcode.WRITE:
    case Opcode.READDIR:
    case Opcode.READDIRPLUS:
      return 40;
    case Opcode.SETATTR:
      return 88;
    case Opcode.FALLOCATE:
      return 32;
    case Opcode.RELEASE:
    case Opcode.RELEASEDIR:
    case Opcode.FLUSH:
    case Opcode.LSEEK:
      return 24;
    case Opcode.GETATTR:
    case Opcode.FSYNC:
    case Opcode.FSYNCDIR:
      return 16;
    case Opcode.OPEN:
    case Opcode.OPENDIR:
    case Opcode.ACCESS:
    case Opcode.GETXATTR:
    case Opcode.LISTXATTR:
    case Opcode.SYNCFS:
      return 8;
    default:
      return 0;
  }
}
