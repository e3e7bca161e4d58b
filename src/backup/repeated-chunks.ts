// Owns finding the chunks of a restore that hold the same content (one digest at several offsets: a
// copied file, a mirrored partition): each is then read, checked and decoded once and written to
// every offset that holds it. Typed arrays and an open-addressing table on the digest, no object per chunk.
import { digestHash, digestsEqual, isZeroDigest } from '../repository/digest.js';

export interface RepeatedChunks {
  /** The chunks to load (ascending): each content's first place. */
  firsts: number[];
  /** The later chunks holding the same content as chunk `c` (ascending; empty when none). */
  copiesOf(c: number): number[];
}

/**
 * Groups `chunks` (ascending indices into `digests`, 32 bytes each) by digest, at most `maximumCopies`
 * copies to a group (a device of one repeated chunk must not make one task of all its writes). Zero
 * chunks are never grouped (they are holes or written as zeros). `lengthOf` keeps a short last chunk
 * apart from full ones whatever its digest.
 */
export function repeatedChunks(chunks: readonly number[], digests: Uint8Array, lengthOf: (c: number) => number, maximumCopies = 15): RepeatedChunks {
  if (maximumCopies > 255) throw new RangeError(`at most 255 copies to a group, not ${maximumCopies}`);
  const n = chunks.length;
  /** Position of the next chunk (in `chunks`) with the same content, or -1. */
  const next = new Int32Array(n).fill(-1);
  const isLater = new Uint8Array(n);
  /** Copies in the group so far, at the group's latest position. */
  const copies = new Uint8Array(n);
  /** Slot → position + 1 of the last chunk seen with that content (0: empty). */
  let size = 2;
  while (size < n * 2) size *= 2;
  const table = new Uint32Array(size);
  const mask = size - 1;
  const same = (a: number, b: number): boolean => digestsEqual(digests, a * 32, digests, b * 32) && lengthOf(a) === lengthOf(b);
  for (let p = 0; p < n; p++) {
    const c = chunks[p] as number;
    if (isZeroDigest(digests, c * 32)) continue;
    let slot = digestHash(digests, c * 32) & mask;
    for (;; slot = (slot + 1) & mask) {
      const e = table[slot] as number;
      if (e === 0) break;
      if (same(chunks[e - 1] as number, c)) {
        if ((copies[e - 1] as number) >= maximumCopies) break; // the group is full: c starts the next one
        next[e - 1] = p;
        isLater[p] = 1;
        copies[p] = (copies[e - 1] as number) + 1;
        break;
      }
    }
    table[slot] = p + 1;
  }
  const firsts: number[] = [];
  for (let p = 0; p < n; p++) if (!isLater[p]) firsts.push(chunks[p] as number);
  return {
    firsts,
    copiesOf(c: number): number[] {
      const out: number[] = [];
      // `chunks` is ascending: c's position by bisection.
      let lo = 0;
      let hi = n;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if ((chunks[mid] as number) < c) lo = mid + 1;
        else hi = mid;
      }
      if (chunks[lo] !== c || isLater[lo]) return out;
      for (let q = next[lo] as number; q >= 0; q = next[q] as number) out.push(chunks[q] as number);
      return out;
    },
  };
}
