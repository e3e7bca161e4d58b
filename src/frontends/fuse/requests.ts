// Owns answering FUSE requests for one BlockDevice shown as the file `disk`: decoding each request in its
// slot, serving it from the device, and writing exactly one reply (none for FORGET and INTERRUPT).
import { fuse as fuseParams } from '../../params.js';
import * as fs from 'node:fs';
import type { BlockDevice } from '../../core/block-device.js';
import { IoFlag } from '../../core/block-device.js';
import { BlkError, errnoNumber, toBlkError } from '../../errors.js';
import * as w from './wire.js';

export const DISK_FILE_NAME = 'disk';
const DISK_ID = 2;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const DT_DIR = 4;
const DT_REG = 8;
const O_ACCMODE = 3;

/** Where replies go and how a slot is handed back: the FUSE descriptor or ring, and the readers' shared memory. */
export interface FuseReplies {
  /** Largest READ/WRITE the kernel may send. */
  maxTransfer: number;
  /** The reply to the request in `slot`: its out header first (16 bytes), then its arguments. */
  send(slot: number, head: Buffer, body?: Buffer): void;
  sendAsync(slot: number, reply: Buffer, sent: () => void): void;
  release(slot: number): void;
  log(line: string): void;
  /** Asks the kernel at INIT for requests through io_uring; `ringAccepted` runs once the INIT reply agreeing to it is sent. */
  offersRing?: boolean;
  ringAccepted?(): void;
}

/**
 * The request side of the in-daemon FUSE server, apart from mounting and reader threads, so that
 * it can be driven (and fuzzed) with requests in plain buffers. Every request whose slot it is
 * given gets one reply and its slot back, whatever the bytes say.
 */
export class FuseRequests {
  #device: BlockDevice;
  #slots: readonly Buffer[];
  #maxTransfer: number;
  #out: FuseReplies;
  #mountedAt = Math.floor(Date.now() / 1000);

  constructor(device: BlockDevice, slots: readonly Buffer[], out: FuseReplies) {
    this.#device = device;
    this.#slots = slots;
    this.#out = out;
    this.#maxTransfer = out.maxTransfer;
  }

  /** Serves the `length`-byte request in slot `slot`. */
  serve(slot: number, length: number): void {
    const b = this.#slots[slot] as Buffer;
    if (length < w.IN_HEADER_LENGTH || length > b.length) {
      this.#out.log(`fuse request of ${length} bytes in a ${b.length}-byte slot`);
      return this.#release(slot);
    }
    const h = w.readInHeader(b);
    if (h.length !== length) return this.#fail(slot, h.unique, new BlkError('EINVAL', `fuse request length ${h.length} != ${length}`));
    try {
      switch (h.opcode) {
        case w.Opcode.READ:
          return this.#read(slot, h.unique);
        case w.Opcode.WRITE:
          return this.#write(slot, h.unique, length);
        case w.Opcode.FORGET:
        case w.Opcode.BATCH_FORGET:
        case w.Opcode.INTERRUPT:
          // No reply: the requests they refer to complete on their own.
          return this.#release(slot);
        case w.Opcode.INIT: {
          const init = this.#init(w.readInitIn(b));
          return this.#settle(slot, h.unique, init.reply, init.isRing);
        }
        default:
          return this.#settle(slot, h.unique, this.#metadata(b, h, length));
      }
    } catch (e) {
      this.#fail(slot, h.unique, e);
    }
  }

  #read(slot: number, unique: bigint): void {
    const b = this.#slots[slot] as Buffer;
    const { offset, size } = w.readIoIn(b);
    // Reads at or past the end are short, as for any file.
    const length = Math.max(0, Math.min(size, this.#device.size - offset, this.#maxTransfer));
    // The data goes where a WRITE's payload is (a ring entry's payload buffer), the header just before.
    const data = b.subarray(w.WRITE_PAYLOAD_OFFSET, w.WRITE_PAYLOAD_OFFSET + length);
    const headAt = w.WRITE_PAYLOAD_OFFSET - w.OUT_HEADER_LENGTH;
    const done = () => {
      w.writeOutHeader(b.subarray(headAt), w.OUT_HEADER_LENGTH + length, 0, unique);
      const reply = b.subarray(headAt, w.WRITE_PAYLOAD_OFFSET + length);
      if (length <= fuseParams.syncReplyMaximum) {
        this.#out.send(slot, reply);
        return this.#release(slot);
      }
      // The kernel's copy of a large reply runs on a thread-pool thread, on the other core.
      this.#out.sendAsync(slot, reply, () => this.#release(slot));
    };
    if (length === 0) return done();
    this.#device.read(offset, data).then(done, (e: unknown) => this.#fail(slot, unique, e));
  }

  #write(slot: number, unique: bigint, length: number): void {
    const b = this.#slots[slot] as Buffer;
    const { offset, size } = w.readIoIn(b);
    if (w.WRITE_PAYLOAD_OFFSET + size !== length) throw new BlkError('EINVAL', `fuse write of ${size} bytes in a ${length}-byte request`);
    // A file of fixed size: a write past its end is EFBIG to the kernel (the device's gate says ENOSPC).
    const isPastEnd = offset + size > this.#device.size;
    const pastEnd = (e: unknown): unknown => (isPastEnd && e instanceof BlkError && e.code === 'ENOSPC' ? new BlkError('EFBIG', e.message) : e);
    const replied = (): void => {
      w.writeOutHeader(b, w.OUT_HEADER_LENGTH + 8, 0, unique);
      b.writeUInt32LE(size, w.OUT_HEADER_LENGTH);
      b.writeUInt32LE(0, w.OUT_HEADER_LENGTH + 4);
      this.#out.send(slot, b.subarray(0, w.OUT_HEADER_LENGTH + 8));
      this.#release(slot);
    };
    let writing: Promise<void> | undefined;
    try {
      writing = this.#device.write(offset, b.subarray(w.WRITE_PAYLOAD_OFFSET, length), IoFlag.None);
    } catch (e) {
      throw pastEnd(e);
    }
    if (writing === undefined) return replied();
    writing.then(replied, (e: unknown) => this.#fail(slot, unique, pastEnd(e)));
  }

  /** Everything but READ and WRITE: a tiny filesystem of one directory and one file. */
  #metadata(b: Buffer, h: w.InHeader, length: number): Promise<Buffer> | Buffer {
    const device = this.#device;
    const isRoot = h.nodeId === w.FUSE_ROOT_ID;
    switch (h.opcode) {
      case w.Opcode.LOOKUP:
        if (!isRoot || w.readName(b, length) !== DISK_FILE_NAME) throw new BlkError('ENOENT', 'no such file');
        return w.encodeEntryOut(this.#attr(DISK_ID), fuseParams.attributeValidSeconds);
      case w.Opcode.GETATTR:
        return w.encodeAttrOut(this.#attr(h.nodeId), fuseParams.attributeValidSeconds);
      case w.Opcode.SETATTR: {
        // Only what changes nothing: the device's size is fixed while it is attached.
        const s = w.readSetattrIn(b);
        if (s.valid & w.FATTR_SIZE && s.size !== device.size) throw new BlkError('EPERM', `${device.name} has a fixed size of ${device.size} bytes`);
        return w.encodeAttrOut(this.#attr(h.nodeId), fuseParams.attributeValidSeconds);
      }
      case w.Opcode.OPEN: {
        if ((w.readOpenIn(b).flags & O_ACCMODE) !== fs.constants.O_RDONLY && device.isReadOnly) throw new BlkError('EROFS', `${device.name} is read-only`);
        // Direct I/O: no second page cache of the device in the kernel, never a stale one (the
        // device also changes through NBD), and parallel writes.
        return w.encodeOpenOut(w.OpenFlag.DIRECT_IO | w.OpenFlag.PARALLEL_DIRECT_WRITES);
      }
      case w.Opcode.OPENDIR:
        return w.encodeOpenOut(0);
      case w.Opcode.READDIR: {
        const r = w.readIoIn(b);
        const entries = [
          { ino: w.FUSE_ROOT_ID, name: '.', type: DT_DIR },
          { ino: w.FUSE_ROOT_ID, name: '..', type: DT_DIR },
          { ino: DISK_ID, name: DISK_FILE_NAME, type: DT_REG },
        ];
        return w.encodeDirents(entries, r.offset, r.size);
      }
      case w.Opcode.FSYNC:
      case w.Opcode.FSYNCDIR:
      case w.Opcode.SYNCFS:
        return device.flush().then(() => Buffer.alloc(0));
      case w.Opcode.FALLOCATE:
        return this.#fallocate(w.readFallocateIn(b)).then(() => Buffer.alloc(0));
      case w.Opcode.STATFS:
        return w.encodeStatfsOut(device.size);
      case w.Opcode.FLUSH: // close(2): not a durability point
      case w.Opcode.RELEASE:
      case w.Opcode.RELEASEDIR:
      case w.Opcode.ACCESS:
      case w.Opcode.DESTROY:
        return Buffer.alloc(0);
      default:
        throw new BlkError('ENOSYS', `fuse opcode ${h.opcode} is not served`);
    }
  }

  #init(i: w.InitIn): { reply: Buffer; isRing: boolean } {
    if (i.major !== w.FUSE_KERNEL_VERSION || i.minor < 23) throw new BlkError('EPROTO', `fuse protocol ${i.major}.${i.minor} is not served (7.23 or newer)`);
    // The kernel offers io_uring only when its fuse module's enable_uring is on.
    const isRing = this.#out.offersRing === true && (i.flags2 & w.InitFlag2.OVER_IO_URING) !== 0;
    const wanted = w.InitFlag.ASYNC_READ | w.InitFlag.BIG_WRITES | w.InitFlag.ASYNC_DIO | w.InitFlag.MAX_PAGES | w.InitFlag.PARALLEL_DIROPS | (isRing ? w.InitFlag.INIT_EXT : 0);
    const reply = w.encodeInitOut({
      minor: Math.min(i.minor, w.FUSE_KERNEL_MINOR_VERSION),
      maxReadahead: i.maxReadahead,
      flags: i.flags & wanted,
      flags2: isRing ? w.InitFlag2.OVER_IO_URING : 0,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWrite: this.#maxTransfer,
      maxPages: this.#maxTransfer / 4096,
    });
    return { reply, isRing };
  }

  #fallocate(f: { offset: number; length: number; mode: number }): Promise<void> {
    const device = this.#device;
    const end = Math.min(f.offset + f.length, device.size);
    if (f.mode & w.FALLOC_FL_PUNCH_HOLE) return device.zero(f.offset, Math.max(0, end - f.offset), IoFlag.MayTrim);
    if (f.mode & w.FALLOC_FL_ZERO_RANGE) return device.zero(f.offset, Math.max(0, end - f.offset), IoFlag.None);
    if ((f.mode & ~w.FALLOC_FL_KEEP_SIZE) === 0 && f.offset + f.length <= device.size) return Promise.resolve(); // already allocated
    return Promise.reject(new BlkError('EOPNOTSUPP', `fallocate mode ${f.mode} past the fixed size of ${device.name}`));
  }

  #attr(nodeId: number): w.Attr {
    if (nodeId === w.FUSE_ROOT_ID) return { ino: w.FUSE_ROOT_ID, size: 0, mode: S_IFDIR | 0o755, nlink: 2, mtimeSeconds: this.#mountedAt };
    if (nodeId !== DISK_ID) throw new BlkError('ENOENT', `no inode ${nodeId}`);
    const mode = S_IFREG | (this.#device.isReadOnly ? 0o444 : 0o644);
    return { ino: DISK_ID, size: this.#device.size, mode, nlink: 1, mtimeSeconds: this.#mountedAt };
  }

  #settle(slot: number, unique: bigint, answer: Promise<Buffer> | Buffer, isRingAccepted = false): void {
    const ok = (body: Buffer) => {
      const header = Buffer.alloc(w.OUT_HEADER_LENGTH);
      w.writeOutHeader(header, w.OUT_HEADER_LENGTH + body.length, 0, unique);
      this.#out.send(slot, header, body);
      this.#release(slot);
      if (isRingAccepted) this.#out.ringAccepted?.();
    };
    if (Buffer.isBuffer(answer)) ok(answer);
    else answer.then(ok, (e: unknown) => this.#fail(slot, unique, e));
  }

  #fail(slot: number, unique: bigint, e: unknown): void {
    const error = toBlkError(e);
    if (error.code !== 'ENOSYS' && error.code !== 'ENOENT') this.#out.log(`fuse ${this.#device.name}: ${error.toString()}`);
    const header = Buffer.alloc(w.OUT_HEADER_LENGTH);
    w.writeOutHeader(header, w.OUT_HEADER_LENGTH, -errnoNumber(error.code), unique);
    this.#out.send(slot, header);
    this.#release(slot);
  }

  #release(slot: number): void {
    this.#out.release(slot);
  }
}
