// Owns the layout of the memory the FUSE reader worker and the daemon's thread share.
import type { ImageReadGate } from '../../core/block-device.js';

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
  cachedReads: { fd: number; size: number; image?: ImageReadGate } | null;
}

/** From the worker: a request of `length` bytes in `slot`, or the end of the connection. */
export type ReaderMessage = { slot: number; length: number } | { ended: string };

/**
 * Int32 words at the start of the memory: a stop flag, a wake counter bumped when a slot is freed,
 * a count of reads the readers answered themselves, then one state word per slot; the slots' bytes
 * start at the first page boundary after them.
 */
export const SlotState = {
  stopIndex: 0,
  wakeIndex: 1,
  answeredIndex: 2,
  headerInts: 3,
  free: 0,
  busy: 1,
  dataOffset: 4096,
} as const;

export function sharedMemoryFor(slotCount: number, slotSize: number): SharedArrayBuffer {
  if ((SlotState.headerInts + slotCount) * 4 > SlotState.dataOffset) throw new RangeError(`too many slots: ${slotCount}`);
  return new SharedArrayBuffer(SlotState.dataOffset + slotCount * slotSize);
}
