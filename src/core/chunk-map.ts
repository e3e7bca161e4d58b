// Owns the per-chunk copy-on-write state of one device in a snapshot: typed arrays, 5 bytes per chunk (and the image readers' page-cache mark, 1 more: DiffArea.readGate).
import { snapshot as params } from '../params.js';

/** blksnap's chunk size rule: 2^18 bytes at least, doubling while the count exceeds 2^40, capped at 2^26. */
export function chunkGeometry(capacity: number, minimumShift: number = params.chunkMinimumShift): { chunkShift: number; chunkCount: number } {
  let chunkShift = minimumShift;
  let chunkCount = Math.ceil(capacity / 2 ** chunkShift);
  while (chunkCount > 2 ** params.chunkMaximumCountShift && chunkShift < params.chunkMaximumShift) {
    chunkShift++;
    chunkCount = Math.ceil(capacity / 2 ** chunkShift);
  }
  return { chunkShift, chunkCount };
}

export const ChunkState = {
  /** The device still holds the original; nothing kept. */
  Untouched: 0,
  /** The original is being read and stored. */
  Copying: 1,
  /** The original is in the difference storage at `slot`. */
  Stored: 2,
  /** Storing failed; the snapshot is corrupted. */
  Failed: 3,
  /** Discarded from the image (a backup that read it let it go): reads zeros, kept nowhere, copied never. */
  Discarded: 4,
} as const;

/** Where byte `pos` of kept chunk i lies in the difference storage, by the chunks' slots (also from other threads). */
export function keptOffset(slot: Uint32Array, chunkSize: number, i: number, pos: number): number {
  return (slot[i] as number) * chunkSize + (pos - i * chunkSize);
}

/**
 * State and difference-storage slot of every chunk. One byte of state and a 32-bit slot index
 * (the chunk's offset in the difference storage divided by the chunk size) per chunk: 5 bytes.
 */
export class ChunkMap {
  readonly chunkShift: number;
  readonly chunkSize: number;
  readonly chunkCount: number;
  readonly capacity: number;
  readonly state: Uint8Array;
  readonly slot: Uint32Array;

  constructor(capacity: number, minimumShift?: number) {
    const { chunkShift, chunkCount } = chunkGeometry(capacity, minimumShift);
    this.capacity = capacity;
    this.chunkShift = chunkShift;
    this.chunkSize = 2 ** chunkShift;
    this.chunkCount = chunkCount;
    // Shared, as the slots: FUSE reader threads read image chunks themselves (ImageReadGate).
    this.state = new Uint8Array(new SharedArrayBuffer(chunkCount));
    this.slot = new Uint32Array(new SharedArrayBuffer(4 * chunkCount));
  }

  /**
   * The last chunk of the run from chunk i that lies before byte `end` and is in `state` (as chunk i
   * is); a run of kept chunks also has consecutive slots, so it is one read of the store.
   */
  lastOfRun(i: number, end: number, state: number): number {
    let j = i;
    while ((j + 1) * this.chunkSize < end && this.state[j + 1] === state && (state !== ChunkState.Stored || this.slot[j + 1] === (this.slot[j] as number) + 1)) j++;
    return j;
  }

  /** Where byte `pos` of kept chunk i lies in the difference storage. */
  keptAt(i: number, pos: number): number {
    return keptOffset(this.slot, this.chunkSize, i, pos);
  }

  /** Bytes of chunks [i, i+count) (the last chunk may be short). */
  lengthOf(i: number, count = 1): number {
    return Math.min(count * this.chunkSize, this.capacity - i * this.chunkSize);
  }

  first(offset: number): number {
    return Math.floor(offset / this.chunkSize);
  }

  last(offset: number, length: number): number {
    return Math.floor((offset + length - 1) / this.chunkSize);
  }
}
