// Owns the interface front ends serve: a byte-addressed device (an attached device or a snapshot
// image). Types only, and nothing of the core's own: every part of the core may name them.
import type { Extent } from '../backing/storage.js';
import type { Event } from '../util/emitter.js';
import type { SplicePipe } from '../os/splice.js';
import type { ChangeMap } from '../cbt/cbt-map.js';

export type { ChangeMap };

/** Per-request flags, independent of any wire format. */
export const IoFlag = {
  None: 0,
  /** Force unit access: the write is durable when it completes. */
  Fua: 1,
  /** Write-zeroes may deallocate. */
  MayTrim: 2,
  /** Write-zeroes must fail with ENOTSUP rather than be slow. */
  FastZero: 4,
  /**
   * More requests wait behind this one: run it off the event loop's thread even where a
   * synchronous copy would be quicker alone, so the copies of several requests overlap.
   */
  Background: 8,
} as const;
export type IoFlags = number;

/**
 * The parts of one write that arrive over time (a large NBD payload still coming off the socket):
 * `length` bytes in all, handed over in order. A device lands them as they come (the page-cache
 * copy of one overlaps the client sending the next) or gathers them, as it can.
 */
export interface IncomingParts {
  readonly length: number;
  /**
   * Calls `land` with each part as it comes (at once for those in already). Resolves with the bytes
   * handed over: all of them, or fewer when the source ends the write early (a client that stalls
   * must not hold a take back; what landed stays, and the source writes the rest as a write of its
   * own). Rejects when the parts stop coming for good (the client went away).
   */
  deliver(land: (part: Uint8Array) => void): Promise<number>;
}

/** A write's data: all of it, pieces of it as they were received (written without joining), or parts still to come. */
export type WriteData = Uint8Array | readonly Buffer[] | IncomingParts;

export function isIncomingParts(data: WriteData): data is IncomingParts {
  return typeof (data as IncomingParts).deliver === 'function';
}

/**
 * What a front end (NBD, a kernel block device) exports: a small complete interface (an attached
 * device, a snapshot image, and the backup devices to come), its capabilities as plain fields, and
 * the fast paths apart in `fast`. Every request passes the device's RequestGate.
 */
export interface BlockDevice {
  /** Export name. */
  readonly name: string;
  readonly size: number;
  readonly isReadOnly: boolean;
  /** True when it can deallocate (TRIM) and report holes. */
  readonly canTrim: boolean;
  read(offset: number, into: Uint8Array): Promise<void>;
  /**
   * The one write entry, whatever form the data takes; the device chooses its fastest way. Returns
   * undefined when the data landed at once (nothing had to wait: no take holding the device, no
   * copy-on-write, no FUA, a store that takes it at once), else a promise of the write.
   */
  write(offset: number, data: WriteData, flags: IoFlags): Promise<void> | undefined;
  zero(offset: number, length: number, flags: IoFlags): Promise<void>;
  trim(offset: number, length: number, flags: IoFlags): Promise<void>;
  flush(): Promise<void>;
  extents(offset: number, length: number, maximumCount: number): Promise<Extent[]>;
  cache(offset: number, length: number): Promise<void>;
  /** Fires once when the device goes away (detach, destroy): front ends end its sessions. */
  readonly onClose: Event<void>;
  /** The fast paths, where the device has them; each may decline, and then the plain call follows. */
  readonly fast?: BlockDeviceFastPaths;
  /** The change tracking behind it, as block status reports it; null where there is none. */
  changes(): ChangeMap | null;
}

/**
 * A client's socket, for sends the kernel makes by page reference (sendfile): the page stays shared
 * with the socket until the client has read it, so a write that would change it must wait for that.
 */
export interface SendSink {
  readonly fd: number;
  /** Whether this socket can tell when its peer has read everything (a Unix socket can; TCP cannot: an acknowledged byte may still wait unread in the peer's queue on this host). */
  readonly knowsWhenRead: boolean;
  /** True when the peer has read every byte sent so far. */
  isRead(): boolean;
  /** Resolves once the peer has read every byte sent so far; nothing more goes out on the socket meanwhile, so the wait is bounded by one socket's worth. */
  whenRead(): Promise<void>;
}

/**
 * A descriptor of the store whose cached pages hold the answer (the caller duplicates it to keep),
 * and for a snapshot image the gate every such read passes: the chunks' states (only untouched
 * ones are read from the device) and counters the read holds while it reads (ImageReadGate).
 */
export interface SharedReads {
  fd: number;
  image?: ImageReadGate;
}

/**
 * Shared memory by which a thread other than the daemon's reads untouched chunks of an image from
 * the device: it adds 1 to `pins[1 + chunk % (pins.length - 1)]` for each chunk of the range, then
 * reads only when `pins[0]` is 0 (the image is readable) and every chunk's `state` is 0
 * (untouched) or 2 (kept: read from the difference storage at its slot), then takes the pins back.
 * A copy-on-write write waits for its chunks' pins to be 0 after leaving the untouched state,
 * before it lands.
 */
export interface ImageReadGate {
  state: Uint8Array;
  pins: Int32Array;
  chunkShift: number;
  /** Where a kept chunk (state 2) is in the difference storage, in chunks; set before its state. */
  slot: Uint32Array;
  /** The difference storage's descriptor (kept chunks never move, so no pin), or -1: kept chunks go to the daemon. */
  diffFd: number;
  /** Kept chunks not in the page cache are read past it: a thread asks the cache first (cachestat), so a miss starts no read into it. */
  isDiffCheckedFirst: boolean;
  /** The same for untouched chunks, read from the device. */
  isOriginCheckedFirst: boolean;
  /**
   * What a thread last found of each untouched chunk's device pages in the page cache (CachedChunk),
   * so reads of a chunk found whole there need not ask first.
   */
  cachedChunks: Uint8Array;
}

/** ImageReadGate.cachedChunks: what a thread last found of an untouched chunk's pages in the page cache. */
export const CachedChunk = {
  /** Not asked yet, or a read found a page gone since. */
  Unknown: 0,
  /** All there: reads of the chunk skip asking first. A miss then may start a read into the cache (rare: an eviction since). */
  All: 1,
  /** Not all there: each read asks for its own range, as it must (a miss starts no read into the cache). */
  Partly: 2,
} as const;

/** Ways to serve a request without a promise or a copy; each says when it cannot. */
export interface BlockDeviceFastPaths {
  /** Reads at once when memory holds the whole range (never waits); false when it cannot: then read(). */
  readNow(offset: number, into: Uint8Array): boolean;
  /**
   * Writes `prefix` (a reply header), then the range, to a non-blocking descriptor (a client's
   * socket) without copying the range through this process, when all of it is in memory. Returns
   * the bytes sent of both (fewer when the descriptor is full), or null when it cannot and sent
   * nothing (then read() it). The kernel hands over page references, not copies: a device lets a
   * later write change bytes sent but not yet read; an image holds such a write back (SendSink).
   */
  sendTo(sink: SendSink, prefix: Uint8Array, offset: number, length: number): number | null;
  /**
   * Fills `pipe` with the range, from the disk past the page cache, without a copy in this process
   * (an image read once by a backup); null when it cannot, having done nothing (then read()). A
   * rejection does not say why (the splice ran in the thread pool): the caller empties the pipe
   * and read()s, which serves the range or fails with its own errno.
   */
  spliceTo?(pipe: SplicePipe, offset: number, length: number): Promise<void> | null;
  /**
   * What another thread needs to answer reads of cached pages itself (preadv2 RWF_NOWAIT) as read()
   * would; null where reads must pass through the device (a store in memory).
   */
  sharedReads(): SharedReads | null;
}
