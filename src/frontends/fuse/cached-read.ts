// Owns reading a device's or an image's range from the page cache in a FUSE worker thread, without
// the event loop: the fast path of the readers and the ring threads alike.
import type { ImageReadGate } from '../../core/block-device.js';
import { ChunkState, keptOffset } from '../../core/chunk-map.js';
import { threadPinOf } from '../../core/origin-readers.js';
import { isRangeCached, readCached } from '../../os/libc.js';

/** The device's own descriptor (a duplicate) and size, and for an image the gate its reads pass. */
export interface CachedReads {
  fd: number;
  size: number;
  image?: ImageReadGate;
}

/**
 * Reads an image range as the ImageReadGate allows: untouched chunks from the device (pinned while
 * read), kept ones from the difference storage, all from the page cache; false when it cannot.
 */
function readImage(gate: ImageReadGate, deviceFd: number, into: Buffer, offset: number): boolean {
  const chunkSize = 2 ** gate.chunkShift;
  const first = Math.floor(offset / chunkSize);
  const last = Math.floor((offset + into.length - 1) / chunkSize);
  for (let i = first; i <= last; i++) Atomics.add(gate.pins, threadPinOf(gate.pins, i), 1);
  try {
    if (Atomics.load(gate.pins, 0) !== 0) return false;
    for (let pos = offset; pos < offset + into.length; ) {
      const i = Math.floor(pos / chunkSize);
      const end = Math.min(offset + into.length, (i + 1) * chunkSize);
      const piece = into.subarray(pos - offset, end - offset);
      const state = Atomics.load(gate.state, i);
      let n: number;
      if (state === ChunkState.Untouched) {
        if (gate.isOriginCheckedFirst && !isRangeCached(deviceFd, pos, piece.length)) return false;
        n = readCached(deviceFd, piece, pos);
      } else if (state === ChunkState.Stored && gate.diffFd >= 0) {
        const at = keptOffset(gate.slot, chunkSize, i, pos);
        if (gate.isDiffCheckedFirst && !isRangeCached(gate.diffFd, at, piece.length)) return false;
        n = readCached(gate.diffFd, piece, at);
      } else return false; // being copied, or failed: the daemon answers
      if (n !== piece.length) return false;
      pos = end;
    }
    return true;
  } finally {
    for (let i = first; i <= last; i++) Atomics.sub(gate.pins, threadPinOf(gate.pins, i), 1);
  }
}

/**
 * Fills `into` with the bytes at `offset` when all are in the page cache (for an image: in untouched
 * or kept chunks); false, having answered nothing, when the daemon's thread must serve the read.
 * Empty reads and reads reaching the end (short ones) are the daemon's.
 */
export function readFromCache(cached: CachedReads, into: Buffer, offset: number): boolean {
  if (into.length === 0 || offset + into.length > cached.size) return false;
  return cached.image ? readImage(cached.image, cached.fd, into, offset) : readCached(cached.fd, into, offset) === into.length;
}
