// Owns the layout of the memory the FUSE reader worker and the daemon's thread share.
import type { CachedReads } from './cached-read.js';
import { Ring } from './wire.js';

/** What the daemon gives the reader worker. */
export interface ReaderShared {
  fd: number;
  memory: SharedArrayBuffer;
  /** All slots in the memory. */
  slotCount: number;
  slotSize: number;
  /** This reader's slots: [firstSlot, firstSlot + ownSlotCount). */
  firstSlot: number;
  ownSlotCount: number;
  /**
   * The device's own descriptor (a duplicate) and size, and for an image the gate its reads pass:
   * the reader answers a READ whose range is all in the page cache (and, for an image, in
   * untouched chunks) itself, with no hop to the daemon's thread. Null for stores in memory.
   */
  cachedReads: CachedReads | null;
  /** Cached READs from this size on are spliced from the page cache (0: never). */
  spliceMinimum: number;
  /** The pipe each reader opens for them. */
  pipeBytes: number;
}

/** From a reader thread: a request of `length` bytes in `slot`, or the end of the connection. */
export type ReaderMessage = { slot: number; length: number } | { ended: string };
/**
 * From a ring thread: the requests it passes on from one wake as (slot, length) pairs, in one
 * message; the end of its entries; or that its entries are registered.
 */
export type RingMessage = { relayed: number[] } | { ended: string } | { ready: true };

/**
 * Int32 words at the start of the memory: a stop flag, a wake counter bumped when a slot is freed,
 * a count of reads the readers answered themselves and of those they spliced, then one state word
 * per slot; the slots' bytes start at the first page boundary after them.
 */
export const SlotState = {
  stopIndex: 0,
  wakeIndex: 1,
  answeredIndex: 2,
  splicedIndex: 3,
  headerInts: 4,
  free: 0,
  busy: 1,
  dataOffset: 4096,
} as const;

export function sharedMemoryFor(slotCount: number, slotSize: number): SharedArrayBuffer {
  if ((SlotState.headerInts + slotCount) * 4 > SlotState.dataOffset) throw new RangeError(`too many slots: ${slotCount}`);
  return new SharedArrayBuffer(SlotState.dataOffset + slotCount * slotSize);
}

/**
 * FUSE over io_uring: each ring entry's memory is `RingEntry.bytes(maxTransfer)` bytes from a page
 * boundary: a page for the ring header, then the request as the daemon's thread reads it (in header
 * and first argument rebuilt just before the payload), then the payload buffer the kernel fills,
 * page-aligned, where a WRITE's data and a READ's reply stay in place.
 */
export const RingEntry = {
  headerAt: 0,
  requestAt: 8192 - 80,
  payloadAt: 8192,
  bytes: (maxTransfer: number): number => 8192 + maxTransfer,
  /** Entry states in the ring control words. */
  inRing: 0,
  relayed: 1,
  replied: 2,
  /** Int32 words of the ring control memory: a stop flag, a count of reads the rings answered, then a state per entry. */
  stopIndex: 0,
  answeredIndex: 1,
  stateIndex: 2,
} as const;

/** One ring entry in the rings' memory: views of its three parts and where they start in the memory. */
export interface RingEntryViews {
  header: Buffer;
  /** The request as the daemon's thread reads it; its tail is the payload. */
  request: Buffer;
  payload: Buffer;
  headerOffset: number;
  payloadOffset: number;
}

/** Entry `e` of rings whose first entry starts at `entryBase` (a page boundary) of `memory`. */
export function ringEntryViews(memory: SharedArrayBuffer, entryBase: number, maxTransfer: number, e: number): RingEntryViews {
  const at = entryBase + e * RingEntry.bytes(maxTransfer);
  const headerOffset = at + RingEntry.headerAt;
  const payloadOffset = at + RingEntry.payloadAt;
  return {
    header: Buffer.from(memory, headerOffset, Ring.headerBytes),
    request: Buffer.from(memory, at + RingEntry.requestAt, RingEntry.payloadAt - RingEntry.requestAt + maxTransfer),
    payload: Buffer.from(memory, payloadOffset, maxTransfer),
    headerOffset,
    payloadOffset,
  };
}

/**
 * What one ring thread gets. Its entries are spread over all the kernel's queues (entry e, counted
 * over all rings, serves queue e % queueCount), so that the requests of one busy CPU are taken by every ring thread.
 */
export interface RingShared {
  fd: number;
  queueCount: number;
  memory: SharedArrayBuffer;
  /** Offset of entry 0 in `memory` (its first page boundary). */
  entryBase: number;
  maxTransfer: number;
  /** This thread's entries: [firstEntry, firstEntry + entryCount); entry e is FuseRequests' slot `firstSlot + e`. */
  firstEntry: number;
  entryCount: number;
  firstSlot: number;
  control: SharedArrayBuffer;
  /** An eventfd the daemon's thread bumps after replying to a relayed request or to stop the ring. */
  wakeFd: number;
  cachedReads: CachedReads | null;
}
