// Owns a snapshot's difference storage: where the originals of changed chunks are kept, and how it grows.
import { openDiffStore } from '../backing/diff-store.js';
import type { DirectFile } from '../backing/direct-file.js';
import type { Storage } from '../backing/storage.js';
import { BlkError, toBlkError } from '../errors.js';
import { adviseNoReadAhead } from '../os/libc.js';
import { DIRECT_ALIGNMENT } from '../os/koffi.js';
import { PipePool } from '../os/splice.js';
import { diffStorageIo, SECTOR_SIZE, snapshot as snapshotParams } from '../params.js';
import { ioBuffers } from '../util/buffer-pool.js';
import { Emitter } from '../util/emitter.js';

/** Pipes for copies by splice: one holds a copy run of at most copyRunMaximumBytes. */
const copyPipes = new PipePool(snapshotParams.copyRunMaximumBytes, diffStorageIo.copyPipesKept, diffStorageIo.copyPipesInUse);

export interface DiffStorageOptions {
  /** Upper bound of the storage in bytes. */
  limit: number;
  /** Growth step of a file store (blksnap's diff_storage_minimum). */
  minimum: number;
  /** Stores of the snapshot's devices: the difference storage may not be one of them. */
  devices: readonly Storage[];
  /**
   * Copy-on-write copies go past the page cache (O_DIRECT), as blksnap's module writes its
   * difference storage with bios: a copy then costs no new page-cache pages. Where the filesystem
   * refuses direct I/O, they go through the page cache.
   */
  isCopyDirect?: boolean;
  /** Share of the limit (0 < share <= 1) past which `onLowSpace` fires, once, before no_space. */
  lowSpaceShare?: number;
  /** A regular file that holds data is emptied all the same; without it such a file is refused (EEXIST). */
  force?: boolean;
}


/**
 * One per snapshot, shared by its devices. Space is given out chunk by chunk from the front (a
 * bump allocator). A file store starts with `minimum` bytes of real allocation and grows by
 * `minimum` whenever free space falls to half of it, never past `limit`; a block device is used
 * up to its size or the limit. When no more space can be had, `onNoSpace` fires with the request.
 */
export class DiffStorage {
  readonly store: Storage;
  readonly kind: 'file' | 'directory' | 'block';
  readonly minimum: number;
  #limit: number;
  #capacity: number;
  #filled = 0;
  #growing: Promise<void> | null = null;
  #noSpace = new Emitter<{ requestedSectors: number }>();
  readonly onNoSpace = this.#noSpace.event;
  /** no_space was raised and the storage has not grown since: blksnap raises a condition once. */
  #isNoSpaceRaised = false;
  #lowSpace = new Emitter<{ usedSectors: number; limitSectors: number }>();
  /** The storage has filled past its warning share of the limit (once per snapshot). */
  readonly onLowSpace = this.#lowSpace.event;
  #lowSpaceShare: number;
  #isLowSpaceRaised = false;
  /** Slots given back (discarded chunks), each `#freeSlotBytes` long: a copy of that size takes one before new space. */
  #freeSlots: number[] = [];
  #freeSlotBytes = 0;
  #releasedBytes = 0;
  #peakUsed = 0;
  /**
   * Copies go here when set (O_DIRECT, into new slots only); reads and image writes use the store's
   * page cache, with read-ahead off so that no page of a slot is cached before its copy is written.
   */
  #direct: DirectFile | null = null;
  /** A copy by splice failed once: copies go through memory from then on. */
  #isSpliceRefused = false;

  private constructor(store: Storage, kind: DiffStorage['kind'], options: Omit<DiffStorageOptions, 'devices'>, capacity: number) {
    this.store = store;
    this.kind = kind;
    this.#limit = options.limit;
    this.minimum = options.minimum;
    this.#lowSpaceShare = options.lowSpaceShare ?? snapshotParams.lowSpaceShare;
    this.#capacity = capacity;
  }

  static async open(target: string, options: DiffStorageOptions): Promise<DiffStorage> {
    if (!Number.isSafeInteger(options.limit) || options.limit <= 0) throw new BlkError('EINVAL', `invalid difference storage limit ${options.limit}`);
    if (!Number.isSafeInteger(options.minimum) || options.minimum < 4096) throw new BlkError('EINVAL', `invalid diff_storage_minimum ${options.minimum}: at least 4096 bytes`);
    const { store, kind } = await openDiffStore(target, { force: options.force ?? false });
    try {
      const own = store.identity();
      for (const device of options.devices) {
        const d = device.identity();
        const isSame = d !== null && (kind === 'block' ? d.rdev === own.rdev : d.rdev === 0 && d.dev === own.dev && d.ino === own.ino);
        if (isSame) throw new BlkError('EINVAL', `difference storage ${target} is the store of a device of this snapshot`);
      }
      const diff = await DiffStorage.over(store, kind, options);
      if (options.isCopyDirect) {
        try {
          diff.#direct = await store.openDirect();
          if (diff.#direct) adviseNoReadAhead(store.readDescriptor());
        } catch (e) {
          await diff.close();
          throw e;
        }
      }
      return diff;
    } catch (e) {
      await store.close();
      throw e;
    }
  }

  /**
   * A difference storage over an opened store (the file, unnamed file or block device open() found,
   * or a memory store in tests). A growable store is emptied and given its first step.
   */
  static async over(store: Storage, kind: DiffStorage['kind'], options: Omit<DiffStorageOptions, 'devices'>): Promise<DiffStorage> {
    const capacity = kind === 'block' ? Math.min(store.size, options.limit) : 0;
    const diff = new DiffStorage(store, kind, options, capacity);
    // A file store is truncated to what this snapshot allocates: its old contents mean nothing now.
    if (kind === 'file' && store.size > 0) await store.trim(0, store.size);
    if (kind !== 'block') await diff.#grow();
    return diff;
  }

  /** Upper bound in bytes; lowered to what is allocated when the filesystem runs out of space. */
  get limit(): number {
    return this.#limit;
  }

  /** Bytes holding originals now: given out, less what discarded chunks gave back. */
  get used(): number {
    return this.#filled - this.#releasedBytes;
  }

  /** Whether a slot given back waits to be taken again (then copies go a chunk at a time, into those). */
  get hasFreeSlot(): boolean {
    return this.#freeSlots.length > 0;
  }

  /** The most `used` has been. */
  get peak(): number {
    return Math.max(this.#peakUsed, this.used);
  }

  /**
   * Gives a slot back (a discarded chunk): its space is returned to the store (a hole punched, or
   * discarded on a block device) and the next copy of its size takes it before new space.
   */
  async release(offset: number, length: number): Promise<void> {
    if (this.#freeSlotBytes !== length) {
      // One slot size at a time (the chunk size of the devices being discarded).
      this.#freeSlots = [];
      this.#freeSlotBytes = length;
    }
    this.#releasedBytes += length;
    // Free for reuse only once the hole is punched: a copy into the slot must not be punched away.
    await this.store.trim(offset, length).catch(() => undefined);
    if (this.#freeSlotBytes === length) this.#freeSlots.push(offset);
  }

  /** Bytes usable now (allocated file size, or the device's usable size). */
  get capacity(): number {
    return this.#capacity;
  }

  /**
   * Gives out `length` bytes aligned to `alignment`; waits for growth when needed. ENOSPC (after a
   * no_space event) when the limit or the store's space is exhausted.
   */
  async allocate(length: number, alignment: number): Promise<number> {
    if (length === this.#freeSlotBytes && this.#freeSlots.length > 0 && length % alignment === 0) {
      this.#releasedBytes -= length;
      this.#peakUsed = Math.max(this.#peakUsed, this.used);
      return this.#freeSlots.pop() as number;
    }
    for (;;) {
      const offset = Math.ceil(this.#filled / alignment) * alignment;
      if (offset + length <= this.#capacity) {
        this.#filled = offset + length;
        this.#peakUsed = Math.max(this.#peakUsed, this.used);
        if (!this.#isLowSpaceRaised && this.#filled >= this.#lowSpaceShare * this.#limit) this.#raiseLowSpace();
        // In the background: a failure here shows again at the allocation that has to wait for growth.
        if (this.#capacity - this.#filled < this.minimum / 2) this.#startGrowth().catch(() => undefined);
        return offset;
      }
      if (!this.#canGrow()) {
        this.#raiseNoSpace(length);
        throw new BlkError('ENOSPC', `difference storage is full: ${this.#filled} of ${this.limit} bytes used`);
      }
      await this.#startGrowth();
    }
  }

  /** Whether copies bypass the page cache (O_DIRECT). */
  get isCopyDirect(): boolean {
    return this.#direct !== null;
  }

  /** The store's descriptor, for other threads to read kept chunks from the page cache; -1 for a memory store. */
  pageCacheDescriptor(): number {
    return this.store.fast?.readDescriptor?.() ?? -1;
  }

  /**
   * With direct copies, reads are reads once (FileStorage.read): a range not all in the page cache
   * (a kept chunk nobody wrote or read since its copy) is read past it.
   */
  read(offset: number, into: Uint8Array): Promise<void> {
    return this.store.read(offset, into, this.#direct !== null);
  }

  /** Reads at once when the page cache holds the range; false otherwise. */
  readNow(offset: number, into: Uint8Array): boolean {
    return this.store.fast?.readNow(offset, into, this.#direct !== null) ?? false;
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.store.write(offset, data);
  }

  /**
   * Keeps `length` bytes of `origin` at `offset` here at `at` (a new slot, aligned, nobody reads or
   * writes it until this resolves). Direct: written past the page cache (no page of the slot is
   * cached: nothing has read it, and read-ahead is off), from the original's page-cache pages by
   * splice where it can, else read into aligned memory first. Otherwise page
   * cache to page cache inside the kernel where it can (one copy instead of two): at once, else in
   * the thread pool (the kernel throttling writers, or the original not cached); else through
   * memory.
   */
  async keep(origin: Storage, offset: number, length: number, at: number): Promise<void> {
    if (this.#direct) {
      if (await this.#keepBySplice(this.#direct, origin, offset, length, at)) return;
      return this.#direct.writeFrom(at, length, (into) => origin.read(offset, into));
    }
    if (origin.fast?.copyToNow(offset, length, this.store, at)) return;
    if (await (origin.fast?.copyTo?.(offset, length, this.store, at) ?? false)) return;
    const buffer = ioBuffers.acquire(length);
    try {
      await origin.read(offset, buffer);
      await this.store.write(at, buffer);
    } finally {
      ioBuffers.release(buffer);
    }
  }

  /**
   * keep() by page reference: the original's page-cache pages spliced into a pipe, and from there
   * written to the slot past the page cache, so no byte of it is copied (the caller lets no write
   * land on the range before this resolves: the pipe holds the very pages a write would change).
   * False, having kept nothing that counts, where it cannot: a range not aligned for direct I/O or
   * larger than a pipe, no pipe free, or a kernel or filesystem that refuses (then not tried again).
   */
  async #keepBySplice(direct: DirectFile, origin: Storage, offset: number, length: number, at: number): Promise<boolean> {
    const fast = origin.fast;
    const isAligned = offset % DIRECT_ALIGNMENT === 0 && length % DIRECT_ALIGNMENT === 0 && at % DIRECT_ALIGNMENT === 0;
    if (!fast?.spliceCached || this.#isSpliceRefused || length > copyPipes.capacity || !isAligned) return false;
    const pipe = copyPipes.acquire();
    if (!pipe) return false;
    try {
      await fast.spliceCached(offset, length, pipe);
      await direct.writeFromPipe(pipe, at, length);
    } catch {
      copyPipes.discard(pipe);
      this.#isSpliceRefused = true;
      return false;
    }
    copyPipes.release(pipe);
    return true;
  }

  flush(): Promise<void> {
    return this.store.flush();
  }

  async close(): Promise<void> {
    await this.#growing?.catch(() => {});
    await this.store.close(); // its O_DIRECT descriptor with it
  }

  #canGrow(): boolean {
    return this.kind !== 'block' && this.store.can.grow && this.#capacity < this.#limit;
  }

  #startGrowth(): Promise<void> {
    if (!this.#canGrow()) return Promise.resolve();
    this.#growing ??= this.#grow().finally(() => (this.#growing = null));
    return this.#growing;
  }

  /** Extends a file store by min(minimum, limit - capacity) with real allocation. */
  async #grow(): Promise<void> {
    const step = Math.min(this.minimum, this.#limit - this.#capacity);
    if (step <= 0) return;
    try {
      await this.store.grow(this.#capacity, step);
      this.#capacity += step;
      this.#isNoSpaceRaised = false;
    } catch (e) {
      // The filesystem is full: what is allocated is all there will be.
      const err = toBlkError(e);
      if (err.code !== 'ENOSPC' && err.code !== 'EDQUOT') throw err;
      this.#raiseNoSpace(step);
      this.#limit = this.#capacity;
    }
  }

  /** Whether the storage has filled past its warning share of the limit. */
  get isLowOnSpace(): boolean {
    return this.#isLowSpaceRaised;
  }

  #raiseLowSpace(): void {
    this.#isLowSpaceRaised = true;
    this.#lowSpace.fire({ usedSectors: Math.ceil(this.#filled / SECTOR_SIZE), limitSectors: Math.floor(this.#limit / SECTOR_SIZE) });
  }

  /** The no_space event, once per condition: every allocation failing after it would otherwise raise its own. */
  #raiseNoSpace(bytes: number): void {
    if (this.#isNoSpaceRaised) return;
    this.#isNoSpaceRaised = true;
    this.#noSpace.fire({ requestedSectors: Math.ceil(bytes / SECTOR_SIZE) });
  }
}

