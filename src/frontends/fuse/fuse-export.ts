// Owns serving one BlockDevice as the file `disk` of a FUSE filesystem, inside the daemon: the kernel's
// requests are read by a worker thread into shared slots and answered here, straight from the device.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { BlockDevice } from '../../core/block-device.js';
import { IoFlag } from '../../core/block-device.js';
import { BlkError, errnoNumber, toBlkError } from '../../errors.js';
import { mountFuse, unmountLazy } from '../../os/libc.js';
import { sharedMemoryFor, SlotState, type ReaderMessage, type ReaderShared } from './slots.js';
import * as w from './wire.js';

export const DISK_FILE_NAME = 'disk';
const DISK_ID = 2;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const DT_DIR = 4;
const DT_REG = 8;
const O_ACCMODE = 3;
/** The device's size does not change while it is attached: the kernel may cache attributes long. */
const ATTR_VALID_SECONDS = 60;
/** Replies up to this size are written on the event loop; larger ones by the thread pool. */
const SYNC_REPLY_MAXIMUM = 64 * 1024;

export interface FuseExportOptions {
  /** Largest READ/WRITE the kernel sends (FUSE max_pages × 4 KiB; 1 MiB needs max_pages 256). */
  maxTransfer?: number;
  /** Requests served at once; further ones wait in the kernel. */
  slotCount?: number;
  /**
   * Threads reading requests. The kernel copies each request (a write's payload too) into the
   * reader page by page, so two readers put both cores on it (bench/block-device.ts).
   */
  readerCount?: number;
  log?: (line: string) => void;
}

export class FuseExport {
  readonly mountpoint: string;
  readonly file: string;
  #device: BlockDevice;
  #fd: number;
  #workers: Worker[];
  #control: Int32Array;
  #slots: Buffer[];
  #maxTransfer: number;
  #mountedAt = Math.floor(Date.now() / 1000);
  #ended: Promise<void>;
  #log: (line: string) => void;
  #isClosed = false;

  /** Mounts a FUSE filesystem at `mountpoint` whose only file, `disk`, is `device`. */
  static mount(device: BlockDevice, mountpoint: string, options: FuseExportOptions = {}): FuseExport {
    fs.mkdirSync(mountpoint, { recursive: true, mode: 0o700 });
    const fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      const data = `fd=${fd},rootmode=${(S_IFDIR | 0o755).toString(8)},user_id=0,group_id=0,allow_other,default_permissions`;
      mountFuse(mountpoint, 'fuse.blksnapd', data);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return new FuseExport(device, mountpoint, fd, options);
  }

  private constructor(device: BlockDevice, mountpoint: string, fd: number, options: FuseExportOptions) {
    this.#device = device;
    this.mountpoint = mountpoint;
    this.file = path.join(mountpoint, DISK_FILE_NAME);
    this.#fd = fd;
    this.#log = options.log ?? (() => undefined);
    this.#maxTransfer = options.maxTransfer ?? 2 ** 20;
    const slotCount = options.slotCount ?? 16;
    // The kernel refuses a read(2) buffer smaller than max_write plus room for the headers.
    const slotSize = this.#maxTransfer + w.BUFFER_HEADER_ROOM;
    const memory = sharedMemoryFor(slotCount, slotSize);
    this.#control = new Int32Array(memory, 0, SlotState.headerInts + slotCount);
    this.#slots = Array.from({ length: slotCount }, (_, i) => Buffer.from(memory, SlotState.dataOffset + i * slotSize, slotSize));
    const readerCount = Math.max(1, Math.min(options.readerCount ?? 2, slotCount));
    const perReader = Math.floor(slotCount / readerCount);
    this.#workers = Array.from({ length: readerCount }, (_, r) => {
      const own = r === readerCount - 1 ? slotCount - r * perReader : perReader;
      const shared: ReaderShared = { fd, memory, slotCount, slotSize, firstSlot: r * perReader, ownSlotCount: own };
      const worker = new Worker(new URL('./reader-worker.js', import.meta.url), { workerData: shared });
      worker.unref();
      worker.on('message', (m: ReaderMessage) => {
        if (!('ended' in m)) this.#serve(m.slot, m.length);
      });
      return worker;
    });
    // The connection has ended when any reader saw ENODEV (all will); a failing reader ends it too.
    this.#ended = Promise.race(
      this.#workers.map(
        (worker) =>
          new Promise<void>((resolve) => {
            worker.on('message', (m: ReaderMessage) => 'ended' in m && resolve());
            worker.on('error', (e) => {
              this.#log(`fuse reader of ${device.name} failed: ${String(e)}`);
              resolve();
            });
            worker.on('exit', () => resolve());
          }),
      ),
    );
  }

  /**
   * Unmounts (lazily: a loop device still bound keeps it until released) and ends the connection;
   * requests still coming after that fail with ENOTCONN in the kernel.
   */
  async unmount(): Promise<void> {
    if (this.#isClosed) return;
    this.#isClosed = true;
    try {
      unmountLazy(this.mountpoint);
    } catch (e) {
      this.#log(`unmount of ${this.mountpoint}: ${toBlkError(e).toString()}`);
    }
    // Unused, the filesystem goes at once and the reader sees ENODEV; in use, closing the
    // descriptor below aborts the connection.
    await Promise.race([this.#ended, new Promise((r) => setTimeout(r, 1000).unref())]);
    Atomics.store(this.#control, SlotState.stopIndex, 1);
    Atomics.add(this.#control, SlotState.wakeIndex, 1);
    Atomics.notify(this.#control, SlotState.wakeIndex);
    // The readers see the stop flag within one poll period and return. Not terminate(): stopping
    // a worker inside its FFI calls (or still loading them) can take the whole process down.
    await Promise.all(this.#workers.map((worker) => exited(worker, 5000)));
    fs.closeSync(this.#fd);
    this.#fd = -1;
    try {
      fs.rmdirSync(this.mountpoint);
    } catch {
      // Still busy (lazily unmounted); the next start cleans it.
    }
  }

  #serve(slot: number, length: number): void {
    const b = this.#slots[slot] as Buffer;
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
    const data = b.subarray(w.OUT_HEADER_LENGTH, w.OUT_HEADER_LENGTH + length);
    const done = () => {
      w.writeOutHeader(b, w.OUT_HEADER_LENGTH + length, 0, unique);
      const reply = b.subarray(0, w.OUT_HEADER_LENGTH + length);
      if (length <= SYNC_REPLY_MAXIMUM) {
        this.#send(reply);
        return this.#release(slot);
      }
      // The kernel's copy of a large reply runs on a thread-pool thread, on the other core.
      this.#sendAsync(reply, () => this.#release(slot));
    };
    if (length === 0) return done();
    this.#device.read(offset, data).then(done, (e: unknown) => this.#fail(slot, unique, e));
  }

  #write(slot: number, unique: bigint, length: number): void {
    const b = this.#slots[slot] as Buffer;
    const { offset, size } = w.readIoIn(b);
    if (w.WRITE_PAYLOAD_OFFSET + size !== length) throw new BlkError('EINVAL', `fuse write of ${size} bytes in a ${length}-byte request`);
    if (offset + size > this.#device.size) throw new BlkError('EFBIG', `write at ${offset}+${size} past the end of ${this.#device.name} (${this.#device.size} bytes)`);
    this.#device.write(offset, b.subarray(w.WRITE_PAYLOAD_OFFSET, length), IoFlag.None).then(
      () => {
        w.writeOutHeader(b, w.OUT_HEADER_LENGTH + 8, 0, unique);
        b.writeUInt32LE(size, w.OUT_HEADER_LENGTH);
        b.writeUInt32LE(0, w.OUT_HEADER_LENGTH + 4);
        this.#send(b.subarray(0, w.OUT_HEADER_LENGTH + 8));
        this.#release(slot);
      },
      (e: unknown) => this.#fail(slot, unique, e),
    );
  }

  /** Everything but READ and WRITE: a tiny filesystem of one directory and one file. */
  #metadata(b: Buffer, h: w.InHeader, length: number): Promise<Buffer> | Buffer {
    const device = this.#device;
    const isRoot = h.nodeId === w.FUSE_ROOT_ID;
    switch (h.opcode) {
      case w.Opcode.INIT:
        return this.#init(w.readInitIn(b));
      case w.Opcode.LOOKUP:
        if (!isRoot || w.readName(b, length) !== DISK_FILE_NAME) throw new BlkError('ENOENT', 'no such file');
        return w.encodeEntryOut(this.#attr(DISK_ID), ATTR_VALID_SECONDS);
      case w.Opcode.GETATTR:
        return w.encodeAttrOut(this.#attr(h.nodeId), ATTR_VALID_SECONDS);
      case w.Opcode.SETATTR: {
        // Only what changes nothing: the device's size is fixed while it is attached.
        const s = w.readSetattrIn(b);
        if (s.valid & w.FATTR_SIZE && s.size !== device.size) throw new BlkError('EPERM', `${device.name} has a fixed size of ${device.size} bytes`);
        return w.encodeAttrOut(this.#attr(h.nodeId), ATTR_VALID_SECONDS);
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

  #init(i: w.InitIn): Buffer {
    if (i.major !== w.FUSE_KERNEL_VERSION || i.minor < 23) throw new BlkError('EPROTO', `fuse protocol ${i.major}.${i.minor} is not served (7.23 or newer)`);
    const wanted = w.InitFlag.ASYNC_READ | w.InitFlag.BIG_WRITES | w.InitFlag.ASYNC_DIO | w.InitFlag.MAX_PAGES | w.InitFlag.PARALLEL_DIROPS;
    return w.encodeInitOut({
      minor: Math.min(i.minor, w.FUSE_KERNEL_MINOR_VERSION),
      maxReadahead: i.maxReadahead,
      flags: i.flags & wanted,
      maxBackground: 64,
      congestionThreshold: 48,
      maxWrite: this.#maxTransfer,
      maxPages: this.#maxTransfer / 4096,
    });
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

  #settle(slot: number, unique: bigint, answer: Promise<Buffer> | Buffer): void {
    const ok = (body: Buffer) => {
      const header = Buffer.alloc(w.OUT_HEADER_LENGTH);
      w.writeOutHeader(header, w.OUT_HEADER_LENGTH + body.length, 0, unique);
      this.#send(header, body);
      this.#release(slot);
    };
    if (Buffer.isBuffer(answer)) ok(answer);
    else answer.then(ok, (e: unknown) => this.#fail(slot, unique, e));
  }

  #fail(slot: number, unique: bigint, e: unknown): void {
    const error = toBlkError(e);
    if (error.code !== 'ENOSYS' && error.code !== 'ENOENT') this.#log(`fuse ${this.#device.name}: ${error.toString()}`);
    const header = Buffer.alloc(w.OUT_HEADER_LENGTH);
    w.writeOutHeader(header, w.OUT_HEADER_LENGTH, -errnoNumber(error.code), unique);
    this.#send(header);
    this.#release(slot);
  }

  /**
   * One reply, one write(2): the kernel copies it into the waiting request and returns. An
   * interrupted request (ENOENT) or a gone connection (ENODEV) leaves nobody to answer.
   */
  #send(head: Buffer, body?: Buffer): void {
    if (this.#fd < 0) return; // closed: the number may belong to another file by now
    try {
      if (body && body.length > 0) fs.writevSync(this.#fd, [head, body]);
      else fs.writeSync(this.#fd, head);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENODEV') this.#log(`fuse reply for ${this.#device.name}: ${String(e)}`);
    }
  }

  #sendAsync(reply: Buffer, sent: () => void): void {
    if (this.#fd < 0) return sent();
    fs.write(this.#fd, reply, 0, reply.length, null, (e) => {
      if (e && e.code !== 'ENOENT' && e.code !== 'ENODEV') this.#log(`fuse reply for ${this.#device.name}: ${String(e)}`);
      sent();
    });
  }

  #release(slot: number): void {
    Atomics.store(this.#control, SlotState.headerInts + slot, SlotState.free);
    Atomics.add(this.#control, SlotState.wakeIndex, 1);
    Atomics.notify(this.#control, SlotState.wakeIndex);
  }
}

/** Resolves when the worker has exited; terminates it only if it has not after `timeoutMs`. */
function exited(worker: Worker, timeoutMs: number): Promise<void> {
  if (worker.threadId < 0) return Promise.resolve(); // already gone
  return new Promise((resolve) => {
    const timer = setTimeout(() => void worker.terminate().catch(() => undefined), timeoutMs);
    worker.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
