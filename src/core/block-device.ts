// Owns the interface front ends serve: a byte-addressed device (an attached device or a snapshot image).
import type { Extent } from '../backing/storage.js';
import type { Event } from '../util/emitter.js';
import type { WriteStream } from './write-stream.js';

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
  write(offset: number, data: Uint8Array, flags: IoFlags): Promise<void>;
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
 * A device's change-block tracking as block status sees it (SPEC §8): one byte per tracking block,
 * the active map for a device (every write so far), the read map for an image (as at its take).
 */
export interface ChangeMap {
  readonly blockSize: number;
  readonly blockCount: number;
  /** The number of the last taken snapshot: contexts cbt-0 … cbt-changesNumber exist. */
  readonly changesNumber: number;
  /** A new generation means the bytes no longer compare with numbers from before it. */
  readonly generationId: string;
  byteAt(block: number): number;
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
   * A descriptor whose cached pages another thread may read (preadv2 RWF_NOWAIT) and answer with,
   * as read() would; null where reads must pass through the device (a snapshot image's kept chunks,
   * a store in memory). The caller duplicates it to keep.
   */
  readDescriptor(): number | null;
  /**
   * Writes at once when nothing has to wait (see StorageFastPaths.writeNow); false otherwise, having
   * written nothing: then write() (a CBT mark already made is the same one write() makes).
   */
  writeNow(offset: number, data: Uint8Array, flags: IoFlags): boolean;
  /**
   * Opens one write whose data arrives in parts: each part lands as it is given, the write is
   * tracked once for its whole range, and it is in flight until end(). Null where the device
   * cannot (then the whole payload is written at once).
   */
  streamWrite(offset: number, length: number, flags: IoFlags): WriteStream | null;
  /** The same as write() of the joined pieces, without joining them where the device can. */
  writeChunks(offset: number, chunks: readonly Buffer[], flags: IoFlags): Promise<void>;
}
