// Owns ordering a restore's chunk loads by where they lie in the packs, for a store read by ranged
// requests (a bucket): the records of neighbouring chunks of a pack become one request of megabytes,
// whatever the device order of their chunks (a backup's workers interleave a device's runs in their
// packs, and an incremental scatters them), so a restore costs few requests and reads each pack in
// order. Typed arrays for the plan, no object per chunk.
import { BlkError } from '../errors.js';
import type { ChunkIndex } from '../repository/chunk-index.js';
import { RECORD_HEADER } from '../repository/pack.js';

/** A ranged read of a pack: bytes [offset, offset + bytes) of packs[pack], holding the records of `chunks`. */
export interface PackRange {
  pack: number;
  offset: number;
  bytes: number;
  /** The device's chunks whose records lie in the range, in pack order. */
  chunks: number[];
}

export interface RangeLimits {
  /** Bytes of one read at most (a single record may exceed it). */
  maximumBytes: number;
  /** Bytes of the chunks one read holds, decoded, at most. */
  maximumDecoded: number;
  /** Bytes between two wanted records still read through rather than split into two reads. */
  gap: number;
}

/**
 * The ranged reads that load `chunks` (device chunk numbers, none of zeros) of a device whose index
 * is `digests`, in pack order; `lengthOf(c)` is chunk c's decoded length. EIO naming the offset of a
 * chunk the repository lacks.
 */
export function* packRanges(index: ChunkIndex, digests: Uint8Array, chunks: readonly number[], chunkSize: number, lengthOf: (c: number) => number, limits: RangeLimits): Generator<PackRange> {
  const n = chunks.length;
  const entries = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const c = chunks[i] as number;
    const e = index.find(digests, c * 32);
    if (e < 0) throw new BlkError('EIO', `the chunk at offset ${c * chunkSize}: chunk ${Buffer.from(digests.subarray(c * 32, c * 32 + 32)).toString('hex')} is missing from the repository`);
    entries[i] = e;
  }
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  order.sort((a, b) => {
    const ea = entries[a] as number;
    const eb = entries[b] as number;
    return index.packNumberOf(ea) - index.packNumberOf(eb) || index.offsetOf(ea) - index.offsetOf(eb);
  });
  let range: PackRange | null = null;
  let decoded = 0;
  for (let k = 0; k < n; k++) {
    const i = order[k] as number;
    const e = entries[i] as number;
    const c = chunks[i] as number;
    const pack = index.packNumberOf(e);
    const offset = index.offsetOf(e);
    const end = offset + RECORD_HEADER + index.storedLengthOf(e);
    const length = lengthOf(c);
    // Sorted, so a record starts at or after the range's last one (at it: one content in two groups of copies).
    const rangeEnd = range ? range.offset + range.bytes : 0;
    if (range && range.pack === pack && offset - rangeEnd <= limits.gap && Math.max(end, rangeEnd) - range.offset <= limits.maximumBytes && decoded + length <= limits.maximumDecoded) {
      range.bytes = Math.max(end, rangeEnd) - range.offset;
      range.chunks.push(c);
      decoded += length;
      continue;
    }
    if (range) yield range;
    range = { pack, offset, bytes: end - offset, chunks: [c] };
    decoded = length;
  }
  if (range) yield range;
}
