// Owns a regular file or a real block device used as a backing store: exclusive open, pread/pwrite, holes.
import { buffers } from '../params.js';
import * as fs from 'node:fs';
import { BlkError, toBlkError } from '../errors.js';
import { copyFileRange, copyFileRangeAsync, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate, isRangeCached, lockExclusive, readCached, seekData, seekHole, sendFile, sizeOfBlockDevice, willNeed } from '../os/libc.js';
import { writeFully, writeFullySync } from '../os/fd-io.js';
import { writeback } from '../os/writeback.js';
import { writeNonBlocking } from '../os/socket-descriptor.js';
import { type SplicePipe, spliceFromFile } from '../os/splice.js';
import { DIRECT_ALIGNMENT } from '../os/koffi.js';
import { totalLength } from '../util/byte-queue.js';
import { InFlight } from '../util/in-flight.js';
import { openAsync } from '../os/async-fs.js';
import type { Extent, Storage, StorageCapabilities, StorageFastPaths } from './storage.js';
import { DirectFile } from './direct-file.js';

export interface FileStorageOptions {
  readOnly?: boolean;
  /**
   * Reads up to this many bytes first try the page cache from the event loop (preadv2 RWF_NOWAIT,
   * which never waits for a disk) and go to the thread pool only for what is not cached: the
   * thread-pool hop costs more than a cached 4 KiB read. 0 sends every read to the thread pool.
   */
  cachedReadMaximum?: number;
  /**
   * Writes up to this many bytes use a synchronous pwrite on the event loop while the kernel is far
   * from throttling writers (os/writeback.ts): a page-cache write is then a memory copy, and
   * buffered writes cannot be made non-blocking otherwise. 0 sends every write to the pool.
   */
  syncWriteMaximum?: number;
}

let zeroBuffer: Buffer | undefined;

export class FileStorage implements Storage, StorageFastPaths {
  readonly path: string;
  readonly can: StorageCapabilities;
  /** Every file store has a page cache to answer from. */
  readonly fast: StorageFastPaths = this;
  #fd: number;
  /** Stores the kernel cannot copy into from this one (another filesystem, a block device). */
  #cannotCopyTo = new WeakSet<FileStorage>();
  #size: number;
  #cachedReadMaximum: number;
  #syncWriteMaximum: number;
  /** Set at close: from then on every operation fails with EBADF (the descriptor number may be reused). */
  #isClosed = false;
  /** Asynchronous operations holding the descriptor; close waits for them. */
  #ops = new InFlight();
  /** The store opened again with O_DIRECT (openDirect), for ranges read once; null where not opened or refused. */
  #direct: DirectFile | null = null;
  #directOpening: Promise<DirectFile | null> | null = null;

  private constructor(path: string, fd: number, isBlockDevice: boolean, options: FileStorageOptions) {
    this.path = path;
    this.#fd = fd;
    this.can = { isBlockDevice, isReadOnly: options.readOnly ?? false, grow: !isBlockDevice };
    this.#cachedReadMaximum = options.cachedReadMaximum ?? 0;
    this.#syncWriteMaximum = options.syncWriteMaximum ?? 0;
    this.#size = 0;
    this.#size = this.probeSize();
  }

  /**
   * Opens a store exclusively: a block device with O_EXCL (the kernel refuses it while mounted or
   * held), a regular file with flock, so a second attach of the same store fails with EBUSY.
   */
  static async open(path: string, options: FileStorageOptions = {}): Promise<FileStorage> {
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(path);
    } catch (e) {
      throw new BlkError(toBlkError(e).code, `cannot attach ${path}: ${toBlkError(e).message}`, { path });
    }
    const isBlockDevice = st.isBlockDevice();
    if (!isBlockDevice && !st.isFile()) {
      throw new BlkError('EINVAL', `${path} is neither a regular file nor a block device`, { path });
    }
    const { O_RDONLY, O_RDWR, O_EXCL } = fs.constants;
    const flags = (options.readOnly ? O_RDONLY : O_RDWR) | (isBlockDevice ? O_EXCL : 0);
    let fd: number;
    try {
      fd = await openAsync(path, flags);
    } catch (e) {
      const err = toBlkError(e);
      const why = err.code === 'EBUSY' ? 'it is in use (mounted, or held by another process)' : err.message;
      throw new BlkError(err.code, `cannot open ${path}: ${why}`, { path });
    }
    let storage: FileStorage;
    try {
      if (!isBlockDevice) lockExclusive(fd, path);
      storage = new FileStorage(path, fd, isBlockDevice, options);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    // Ready before the first read once: a read through the page cache would start read-ahead,
    // and the reads after it would find their ranges cached.
    await storage.openDirect().catch(() => null);
    return storage;
  }

  /**
   * Opens the store a second time with O_DIRECT, once; null where the filesystem refuses direct
   * I/O. Reads of ranges read once (read(…, true)) then go past the page cache when not cached.
   */
  openDirect(): Promise<DirectFile | null> {
    this.#directOpening ??= this.#held((fd) => DirectFile.reopen(this.path, fd, 0, !this.can.isReadOnly)).then(async (direct) => {
      // Closed meanwhile: close() may have run before this, so the descriptor is closed here.
      if (this.#isClosed) {
        await direct?.close();
        return null;
      }
      this.#direct = direct;
      return direct;
    });
    return this.#directOpening;
  }

  /** Wraps a descriptor opened elsewhere (an unnamed O_TMPFILE file); the store owns it from now on. */
  static adopt(path: string, fd: number, isBlockDevice: boolean, options: FileStorageOptions = {}): FileStorage {
    return new FileStorage(path, fd, isBlockDevice, options);
  }

  /** Extends a regular file by really allocating [offset, offset+length) (fallocate mode 0). */
  grow(offset: number, length: number): Promise<void> {
    return this.#held((fd) => fallocate(fd, 0, offset, length)).then(() => void this.probeSize());
  }

  /** Device and inode, to recognise the same file under another path; a block device's own number. */
  identity(): { dev: number; ino: number; rdev: number } {
    const st = fs.fstatSync(this.#open());
    return { dev: st.dev, ino: st.ino, rdev: this.can.isBlockDevice ? st.rdev : 0 };
  }

  get size(): number {
    return this.#size;
  }

  probeSize(): number {
    const fd = this.#open();
    this.#size = this.can.isBlockDevice ? sizeOfBlockDevice(fd) : fs.fstatSync(fd).size;
    return this.#size;
  }

  /** The descriptor for an operation that runs now; EBADF once the store is closed. */
  #open(): number {
    if (this.#isClosed) throw new BlkError('EBADF', `${this.path} is closed`, { path: this.path });
    return this.#fd;
  }

  /** Runs an asynchronous operation that holds the descriptor until it settles. */
  #held<T>(operation: (fd: number) => Promise<T>): Promise<T> {
    let fd: number;
    try {
      fd = this.#open();
    } catch (e) {
      return Promise.reject(e);
    }
    this.#ops.enter();
    return operation(fd).finally(() => this.#ops.leave());
  }

  readDescriptor(): number {
    return this.#open();
  }

  /**
   * `once` (see read()): a range not all cached is left to read() without trying the page cache,
   * since a page-cache read that misses starts a read into the cache, which read() would then do
   * again past it.
   */
  readNow(offset: number, into: Uint8Array, once = false): boolean {
    if (this.#isClosed || into.length > this.#cachedReadMaximum || this.#isReadPastCache(offset, into.length, once)) return false;
    return this.#readCached(offset, into) === into.length;
  }

  /**
   * Whether a read goes past the page cache: read once, with the O_DIRECT descriptor open, and
   * not all cached. Then the disk reads straight into the caller's memory and no page-cache page
   * is allocated (on a VM whose freed memory goes back to the host, each new page costs a fault
   * in the host, more than the read: docs/performance.md).
   */
  #isReadPastCache(offset: number, length: number, once: boolean): boolean {
    return once && this.readsOncePastCache() && !this.isCached(offset, length);
  }

  readsOncePastCache(): boolean {
    return this.#direct !== null;
  }

  canSpliceOnce(offset: number, length: number): boolean {
    const aligned = offset % DIRECT_ALIGNMENT === 0 && length % DIRECT_ALIGNMENT === 0;
    return aligned && !this.#isClosed && this.#isReadPastCache(offset, length, true);
  }

  spliceCached(offset: number, length: number, pipe: SplicePipe): Promise<void> {
    return this.#held((fd) => spliceFromFile(fd, offset, pipe, length));
  }

  spliceOnce(offset: number, length: number, pipe: SplicePipe): Promise<void> {
    const direct = this.#direct as DirectFile;
    return this.#held(() => spliceFromFile(direct.descriptor, offset, pipe, length));
  }

  #readCached(offset: number, into: Uint8Array): number {
    if (this.#isClosed) return 0;
    try {
      return readCached(this.#fd, into, offset);
    } catch {
      return 0;
    }
  }

  /** `once`: the caller reads the range this once (a snapshot image, the difference storage): past the page cache when not cached. */
  read(offset: number, into: Uint8Array, once = false): Promise<void> {
    if (this.#isReadPastCache(offset, into.length, once)) {
      const direct = this.#direct as DirectFile;
      return this.#held(() => direct.read(offset, into));
    }
    let start = 0;
    if (into.length <= this.#cachedReadMaximum) {
      start = this.#readCached(offset, into);
      if (start === into.length) return Promise.resolve();
    }
    return this.#held((fd) => new Promise((resolve, reject) => {
      const step = (done: number): void => {
        fs.read(fd, into, done, into.length - done, offset + done, (err, n) => {
          if (err) return reject(toBlkError(err));
          if (n === 0) return reject(this.#shortRead(offset, into.length, done));
          if (done + n < into.length) return step(done + n);
          resolve();
        });
      };
      step(start);
    }));
  }

  isCached(offset: number, length: number): boolean {
    return !this.#isClosed && isRangeCached(this.#fd, offset, length);
  }

  sendTo(fd: number, prefix: Uint8Array, offset: number, length: number): number {
    const storeFd = this.#open();
    const prefixSent = writeNonBlocking(fd, prefix);
    if (prefixSent < prefix.length) return prefixSent;
    let sent = 0;
    try {
      while (sent < length) {
        const n = sendFile(fd, storeFd, offset + sent, length - sent);
        if (n === 0) break;
        sent += n;
      }
    } catch (e) {
      // Once the prefix is out the caller must finish the reply: it reads the rest (and meets the
      // error there); an exception now would leave half a reply on the wire.
      if (prefixSent === 0) throw e;
    }
    return prefixSent + sent;
  }

  copyToNow(offset: number, length: number, target: Storage, targetOffset: number): boolean {
    if (!(target instanceof FileStorage) || this.#isClosed || target.#isClosed || this.#cannotCopyTo.has(target) || !target.#isSyncWrite(length) || !this.isCached(offset, length)) return false;
    let copied: number | null = 0;
    target.#timedSyncWrite(() => (copied = copyFileRange(this.#fd, offset, target.#fd, targetOffset, length)));
    if (copied === null) {
      this.#cannotCopyTo.add(target);
      return false;
    }
    if (copied < length) throw new BlkError('EIO', `copy of ${length} bytes at ${offset} ended after ${copied} bytes`);
    return true;
  }

  async copyTo(offset: number, length: number, target: Storage, targetOffset: number): Promise<boolean> {
    if (!(target instanceof FileStorage) || this.#isClosed || target.#isClosed || this.#cannotCopyTo.has(target)) return false;
    const targetFd = target.#open();
    const copied = await this.#held((fd) => copyFileRangeAsync(fd, offset, targetFd, targetOffset, length));
    // As copyToNow: where the kernel cannot copy between the two, no copy tries again.
    if (copied === null) this.#cannotCopyTo.add(target);
    return copied === length;
  }

  writeNow(offset: number, data: Uint8Array): boolean {
    const fd = this.#open();
    if (!this.#isSyncWrite(data.length)) return false;
    this.#timedSyncWrite(() => writeFullySync(fd, data, offset));
    return true;
  }

  write(offset: number, data: Uint8Array, inBackground = false): Promise<void> {
    // On the event loop only while the kernel is far from throttling writers (os/writeback.ts):
    // then it is a memory copy, and doing it here beats the thread-pool hop (docs/performance.md).
    if (!inBackground && this.#isSyncWrite(data.length)) {
      try {
        this.writeNow(offset, data);
        return Promise.resolve();
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return this.#held((fd) => writeFully(fd, data, offset).catch((e: unknown) => Promise.reject(toBlkError(e))));
  }

  #isSyncWrite(length: number): boolean {
    return length <= this.#syncWriteMaximum && writeback.allowsSyncWrite;
  }

  /** Runs a synchronous write and reports its duration to the writeback watch; throws a BlkError. */
  #timedSyncWrite(write: () => void): void {
    try {
      const started = performance.now();
      write();
      writeback.noteSyncWrite(performance.now() - started);
    } catch (e) {
      throw toBlkError(e);
    }
  }

  writeChunks(offset: number, chunks: readonly Buffer[], inBackground = false): Promise<void> {
    const total = totalLength(chunks);
    if (!inBackground && this.#isSyncWrite(total)) {
      let n = 0;
      try {
        const fd = this.#open();
        this.#timedSyncWrite(() => (n = fs.writevSync(fd, chunks as Buffer[], offset)));
      } catch (e) {
        return Promise.reject(e);
      }
      return n === total ? Promise.resolve() : this.write(offset + n, Buffer.concat(chunks as Buffer[]).subarray(n));
    }
    return this.#held((fd) => new Promise<number>((resolve, reject) => {
      fs.writev(fd, chunks as Buffer[], offset, (err, n) => (err ? reject(toBlkError(err)) : resolve(n)));
    })).then((n) => {
      // A short write (rare: signals, quotas): finish the rest from one joined buffer.
      if (n < total) return this.write(offset + n, Buffer.concat(chunks as Buffer[]).subarray(n));
      return undefined;
    });
  }

  flush(): Promise<void> {
    return this.#held((fd) => new Promise((resolve, reject) => {
      fs.fdatasync(fd, (err) => (err ? reject(toBlkError(err)) : resolve()));
    }));
  }

  trim(offset: number, length: number): Promise<void> {
    return this.#held((fd) => fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)).catch((e: unknown) => {
      // A store that cannot deallocate simply keeps the data: TRIM is advisory.
      const err = toBlkError(e);
      if (err.code === 'EOPNOTSUPP' || err.code === 'ENOTSUP') return;
      throw err;
    });
  }

  async zero(offset: number, length: number, mayTrim: boolean, fastOnly: boolean): Promise<void> {
    const mode = mayTrim ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    try {
      await this.#held((fd) => fallocate(fd, mode, offset, length));
      return;
    } catch (e) {
      const err = toBlkError(e);
      if (err.code !== 'EOPNOTSUPP' && err.code !== 'ENOTSUP') throw err;
    }
    if (fastOnly) throw new BlkError('ENOTSUP', `${this.path} cannot zero ${length} bytes at ${offset} without writing them`);
    zeroBuffer ??= Buffer.alloc(buffers.zeroPieceBytes);
    for (let done = 0; done < length; done += buffers.zeroPieceBytes) {
      const n = Math.min(buffers.zeroPieceBytes, length - done);
      await this.write(offset + done, zeroBuffer.subarray(0, n));
    }
  }

  async extents(offset: number, length: number, maximumCount: number): Promise<Extent[]> {
    const end = offset + length;
    const fd = this.#open();
    if (this.can.isBlockDevice) return [{ offset, length, isHole: false, isZero: false }];
    const out: Extent[] = [];
    let pos = offset;
    while (pos < end && out.length < maximumCount) {
      const data = seekData(fd, pos);
      if (data === null || data >= end) {
        out.push({ offset: pos, length: end - pos, isHole: true, isZero: true });
        break;
      }
      if (data > pos) {
        out.push({ offset: pos, length: data - pos, isHole: true, isZero: true });
        if (out.length >= maximumCount) break;
      }
      const hole = Math.min(seekHole(fd, data), end);
      out.push({ offset: data, length: hole - data, isHole: false, isZero: false });
      pos = hole;
    }
    return out;
  }

  cache(offset: number, length: number): Promise<void> {
    return this.#held((fd) => willNeed(fd, offset, length));
  }

  async close(): Promise<void> {
    if (this.#isClosed) return;
    this.#isClosed = true;
    // Operations under way hold the descriptor: closing under them would let them reach whatever
    // file is opened next under the same number.
    await this.#ops.idle();
    await this.#direct?.close();
    await new Promise<void>((resolve) => fs.close(this.#fd, () => resolve()));
  }

  #shortRead(offset: number, length: number, done: number): BlkError {
    return new BlkError('EIO', `short read from ${this.path}: ${done} of ${length} bytes at ${offset} (was the store truncated?)`, {
      path: this.path, offset, length,
    });
  }
}
