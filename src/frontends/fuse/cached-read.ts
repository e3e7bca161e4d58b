// Owns reading a device's or an image's range from the page cache in a FUSE worker thread, without
// the event loop: the fast path of the readers and the ring threads alike. Readers splice larger
// ranges into a pipe instead (page references, no copy into this process).
import * as fs from 'node:fs';
import { CachedChunk, type ImageReadGate } from '../../core/block-device.js';
import { ChunkState, keptOffset } from '../../core/chunk-map.js';
import { threadPinOf } from '../../core/origin-readers.js';
import { isRangeCached, readCached } from '../../os/libc.js';
import { emptyPipe, type SplicePipe, spliceFileToPipe, spliceFromPipe } from '../../os/splice.js';

/** The device's own descriptor (a duplicate) and size, and for an image the gate its reads pass. */
export interface CachedReads {
  fd: number;
  size: number;
  image?: ImageReadGate;
}

/**
 * Where a cached range goes, piece by piece: `length` bytes of descriptor `fd` from `position`, which
 * are the bytes at `at` of the range; `isCheckedFirst` when the page cache must be asked before
 * reading (a miss must not start a read into it). False when the piece could not be taken.
 */
type PieceSink = (fd: number, position: number, length: number, at: number, isCheckedFirst: boolean) => boolean;

/**
 * Where reads of untouched chunks must ask the page cache first (isOriginCheckedFirst; elsewhere
 * they never ask, and this says false): whether all of chunk `i` was cached when last asked. The
 * first to want it asks once for the whole chunk (cachestat). A partly cached chunk is not asked
 * again: an image read once past the cache brings nothing of it in.
 */
function isKnownCached(gate: ImageReadGate, device: CachedReads, i: number): boolean {
  if (!gate.isOriginCheckedFirst) return false;
  const known = gate.cachedChunks[i];
  if (known !== CachedChunk.Unknown) return known === CachedChunk.All;
  const start = i * 2 ** gate.chunkShift;
  const isAll = isRangeCached(device.fd, start, Math.min(2 ** gate.chunkShift, device.size - start));
  gate.cachedChunks[i] = isAll ? CachedChunk.All : CachedChunk.Partly;
  return isAll;
}

/**
 * Hands an image range to `sink` as the ImageReadGate allows: untouched chunks from the device, kept
 * ones from the difference storage. The chunks stay pinned (a copy-on-write write to them waits)
 * until `whilePinned` has run: a pipe holds references to the device's pages, not copies.
 */
function imagePieces(gate: ImageReadGate, device: CachedReads, offset: number, length: number, sink: PieceSink, whilePinned: () => boolean): boolean {
  const chunkSize = 2 ** gate.chunkShift;
  const first = Math.floor(offset / chunkSize);
  const last = Math.floor((offset + length - 1) / chunkSize);
  for (let i = first; i <= last; i++) Atomics.add(gate.pins, threadPinOf(gate.pins, i), 1);
  try {
    if (Atomics.load(gate.pins, 0) !== 0) return false;
    for (let pos = offset; pos < offset + length; ) {
      const i = Math.floor(pos / chunkSize);
      const state = Atomics.load(gate.state, i);
      let pieceEnd: number;
      let isTaken: boolean;
      if (state === ChunkState.Untouched) {
        // A run of untouched chunks alike (all known cached, or none) is one piece: one read of the device.
        const isCached = isKnownCached(gate, device, i);
        let j = i;
        while (j < last && Atomics.load(gate.state, j + 1) === ChunkState.Untouched && isKnownCached(gate, device, j + 1) === isCached) j++;
        pieceEnd = Math.min(offset + length, (j + 1) * chunkSize);
        isTaken = sink(device.fd, pos, pieceEnd - pos, pos - offset, gate.isOriginCheckedFirst && !isCached);
        if (!isTaken && isCached) gate.cachedChunks.fill(CachedChunk.Unknown, i, j + 1); // a page has gone since: ask again
      } else if (state === ChunkState.Stored && gate.diffFd >= 0) {
        pieceEnd = Math.min(offset + length, (i + 1) * chunkSize);
        isTaken = sink(gate.diffFd, keptOffset(gate.slot, chunkSize, i, pos), pieceEnd - pos, pos - offset, gate.isDiffCheckedFirst);
      } else return false; // being copied, or failed: the daemon answers
      if (!isTaken) return false;
      pos = pieceEnd;
    }
    return whilePinned();
  } finally {
    for (let i = first; i <= last; i++) Atomics.sub(gate.pins, threadPinOf(gate.pins, i), 1);
  }
}

/** Whether the reader may answer a READ of this range itself: not empty, not reaching the end (short reads are the daemon's). */
function isServable(cached: CachedReads, offset: number, length: number): boolean {
  return length > 0 && offset + length <= cached.size;
}

/**
 * Fills `into` with the bytes at `offset` when all are in the page cache (for an image: in untouched
 * or kept chunks); false, having answered nothing, when the daemon's thread must serve the read.
 */
export function readFromCache(cached: CachedReads, into: Buffer, offset: number): boolean {
  if (!isServable(cached, offset, into.length)) return false;
  if (!cached.image) return readCached(cached.fd, into, offset) === into.length;
  const copy: PieceSink = (fd, position, length, at, isCheckedFirst) =>
    (!isCheckedFirst || isRangeCached(fd, position, length)) && readCached(fd, into.subarray(at, at + length), position) === length;
  return imagePieces(cached.image, cached, offset, into.length, copy, () => true);
}

/**
 * Puts `header` (written once the first piece is known to be cached), then the `length` bytes at
 * `offset` as references to cached pages, into `pipe`; then runs `send` (which moves the pipe's
 * contents on) while an image's chunks are still pinned. False when a piece is not cached or `send`
 * failed: the pipe may then hold part of the reply (emptyPipe).
 */
export function spliceFromCache(cached: CachedReads, pipe: SplicePipe, header: Uint8Array, offset: number, length: number, send: () => boolean): boolean {
  if (!isServable(cached, offset, length)) return false;
  let isHeaderIn = false;
  // Always asked first: a splice from a range not cached would wait for the disk in this thread.
  const splice: PieceSink = (fd, position, pieceLength) => {
    if (!isRangeCached(fd, position, pieceLength)) return false;
    if (!isHeaderIn && fs.writeSync(pipe.writeFd, header) !== header.length) return false;
    isHeaderIn = true;
    return spliceFileToPipe(fd, position, pipe, pieceLength);
  };
  if (!cached.image) return splice(cached.fd, offset, length, 0, true) && send();
  return imagePieces(cached.image, cached, offset, length, splice, send);
}

/**
 * A whole reply by splice: `header` (whose length field counts the range too), then the `length`
 * bytes at `offset` from the page cache, through `pipe` into `toFd` (/dev/fuse) in one move. False,
 * with the pipe emptied into `scratch`, when a piece is not cached, `toFd` takes less than the whole
 * reply, or a splice throws (ENOENT: the request was interrupted; ENODEV: the connection is gone):
 * the caller answers another way, or finds nobody to answer.
 */
export function spliceReply(cached: CachedReads, pipe: SplicePipe, header: Uint8Array, offset: number, length: number, toFd: number, scratch: Uint8Array): boolean {
  const total = header.length + length;
  try {
    if (spliceFromCache(cached, pipe, header, offset, length, () => spliceFromPipe(pipe, toFd, total) === total)) return true;
  } catch {
    // Below: nothing of this reply may stay in the pipe for the next one.
  }
  emptyPipe(pipe, scratch);
  return false;
}
