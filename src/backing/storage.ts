// Owns the interface every backing store implements: byte-addressed I/O on a file, a block device or memory.
import type { SplicePipe } from '../os/splice.js';

/** A run of bytes with the same allocation state, as NBD base:allocation reports it. */
export interface Extent {
  offset: number;
  length: number;
  /** Not allocated: reads as zeroes and takes no space. */
  isHole: boolean;
  /** Known to read as zeroes. */
  isZero: boolean;
}

/** What a store can do beyond reading and writing, so callers never probe for optional members. */
export interface StorageCapabilities {
  /** A real block device (fixed size, no holes to report). */
  readonly isBlockDevice: boolean;
  readonly isReadOnly: boolean;
  /** grow() extends it with real allocation (a regular file, memory). */
  readonly grow: boolean;
}

/**
 * What a device keeps its bytes on: a small complete interface (a fake takes a page), with the
 * page-cache fast paths of a file store apart in `fast`. Offsets and lengths are bytes and are
 * checked by the caller (the device's request gate) against `size`; a store only reports what
 * the OS says.
 */
export interface Storage {
  readonly path: string;
  readonly can: StorageCapabilities;
  /** Size in bytes as of the last `probeSize()` (or open). */
  readonly size: number;
  /**
   * Fills `into` wholly, or rejects (EIO on a short read). `once`: the caller reads the range this
   * once (a backup reading a snapshot image), so a store may read it past its page cache.
   */
  read(offset: number, into: Uint8Array, once?: boolean): Promise<void>;
  /**
   * `inBackground`: the caller has more work waiting; run the write off its thread even where a
   * synchronous copy would be quicker alone, so copies overlap.
   */
  write(offset: number, data: Uint8Array, inBackground?: boolean): Promise<void>;
  /** Makes every completed write durable (fdatasync). */
  flush(): Promise<void>;
  /** Deallocates a range; it reads as zeroes afterwards. */
  trim(offset: number, length: number): Promise<void>;
  /**
   * Makes a range read as zeroes. `mayTrim`: deallocating is fine. `fastOnly`: fail with ENOTSUP
   * rather than fall back to writing zero buffers (NBD FAST_ZERO).
   */
  zero(offset: number, length: number, mayTrim: boolean, fastOnly: boolean): Promise<void>;
  /** Allocation map of a range, in order, covering at least its first byte. */
  extents(offset: number, length: number, maximumCount: number): Promise<Extent[]>;
  /** Hint that a range will be read soon. */
  cache(offset: number, length: number): Promise<void>;
  /** Extends the store to hold [offset, offset+length) with real allocation (can.grow); ENOSPC when the space is not there. */
  grow(offset: number, length: number): Promise<void>;
  /** Asks the OS for the current size again (a capacity change resets CBT at the next take). */
  probeSize(): number;
  /** Device and inode of a file store, a block device's own number (rdev, else 0): to recognise it under another path; null for memory. */
  identity(): { dev: number; ino: number; rdev: number } | null;
  close(): Promise<void>;
  /** The fast paths, where the store has a page cache to answer from; absent otherwise. */
  readonly fast?: StorageFastPaths;
}

/** Answers from memory, or copies inside the kernel, at once; each says false (having done nothing) when it would have to wait. */
export interface StorageFastPaths {
  /** Reads at once when memory holds the whole range (never waits for a disk). `once`: as for read(). */
  readNow(offset: number, into: Uint8Array, once?: boolean): boolean;
  /** The store's open descriptor: another thread may read its cached pages (preadv2 RWF_NOWAIT) as readNow() would. */
  readDescriptor?(): number;
  /**
   * Whether reads once (read(…, true)) of ranges not all cached go past the page cache: then a try
   * of the cache (readNow, or another thread's preadv2 RWF_NOWAIT) must ask it first, since a miss
   * there starts read-ahead of the range, which the direct read would read again.
   */
  readsOncePastCache?(): boolean;
  /** Whether spliceOnce() takes the range: a read once past the page cache, aligned for it. */
  canSpliceOnce?(offset: number, length: number): boolean;
  /** Reads a range once into a pipe, past the page cache (the pipe then holds exactly `length` bytes). */
  spliceOnce?(offset: number, length: number, pipe: SplicePipe): Promise<void>;
  /**
   * Adds a range to a pipe as references to the page cache's pages (read into the cache first where
   * it is not there), in the thread pool; the pipe then holds exactly `length` bytes. Those pages
   * change with the next write to the range: the caller empties the pipe before one can land.
   */
  spliceCached?(offset: number, length: number, pipe: SplicePipe): Promise<void>;
  /** Whether a read of the range would be served from memory alone. */
  isCached(offset: number, length: number): boolean;
  /**
   * Writes `prefix`, then sends a range inside the kernel (sendfile), to a non-blocking descriptor;
   * returns the bytes sent of both, fewer when the descriptor is full. Call after isCached(): it
   * blocks on an uncached range.
   */
  sendTo(fd: number, prefix: Uint8Array, offset: number, length: number): number;
  /** Writes at once when that cannot keep the caller waiting (a page-cache copy while the kernel is far from throttling writers). */
  writeNow(offset: number, data: Uint8Array): boolean;
  /** Copies a range of this store into `target` inside the kernel, at once, when it can (copy_file_range). */
  copyToNow(offset: number, length: number, target: Storage, targetOffset: number): boolean;
  /** As copyToNow, in the thread pool: resolves false (having copied nothing that counts) when the kernel cannot. */
  copyTo?(offset: number, length: number, target: Storage, targetOffset: number): Promise<boolean>;
  /** Writes consecutive pieces as one write (pwritev); saves joining them first. */
  writeChunks(offset: number, chunks: readonly Buffer[], inBackground?: boolean): Promise<void>;
}
