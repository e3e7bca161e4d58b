// Owns the interface every backing store implements: byte-addressed I/O on a file, a block device or memory.

/** A run of bytes with the same allocation state, as NBD base:allocation reports it. */
export interface Extent {
  offset: number;
  length: number;
  /** Not allocated: reads as zeroes and takes no space. */
  isHole: boolean;
  /** Known to read as zeroes. */
  isZero: boolean;
}

/**
 * What a device keeps its bytes on. Offsets and lengths are bytes and are checked by the caller
 * (the tracker) against `size`; a store only reports what the OS says.
 */
export interface Storage {
  readonly path: string;
  readonly isBlockDevice: boolean;
  readonly isReadOnly: boolean;
  /** Size in bytes as of the last `probeSize()` (or open). */
  readonly size: number;
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Reads at once when memory holds the whole range (never waits for a disk); false when it cannot. */
  readNow?(offset: number, into: Uint8Array): boolean;
  /** Whether a read of the range would be served from memory alone, never waiting for a disk. */
  isCached?(offset: number, length: number): boolean;
  /**
   * Writes `prefix`, then sends a range inside the kernel (sendfile), to a non-blocking descriptor;
   * returns the bytes sent of both, fewer when the descriptor is full. Call after isCached(): it
   * blocks on an uncached range.
   */
  sendTo?(fd: number, prefix: Uint8Array, offset: number, length: number): number;
  /**
   * `inBackground`: the caller has more work waiting; run the write off its thread even where a
   * synchronous copy would be quicker alone, so copies overlap.
   */
  write(offset: number, data: Uint8Array, inBackground?: boolean): Promise<void>;
  /**
   * Writes at once when that cannot keep the caller waiting (a page-cache copy while the kernel is
   * far from throttling writers); false, having written nothing, when it would: then write().
   */
  writeNow?(offset: number, data: Uint8Array): boolean;
  /**
   * Copies a range of this store into `target` inside the kernel, at once, when it cannot keep the
   * caller waiting (the range cached, the kernel far from throttling writers) and the kernel can
   * copy between the two; false, having copied nothing, otherwise: then read and write it.
   */
  copyToNow?(offset: number, length: number, target: Storage, targetOffset: number): boolean;
  /** Writes consecutive pieces as one write (pwritev), where the store can; saves joining them first. */
  writeChunks?(offset: number, chunks: readonly Buffer[], inBackground?: boolean): Promise<void>;
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
  /** Device and inode of a file store, a block device's own number (rdev, else 0): to recognise it under another path. */
  identity?(): { dev: number; ino: number; rdev: number };
  /** Asks the OS for the current size again (a capacity change resets CBT at the next take). */
  probeSize(): number;
  close(): Promise<void>;
}
