// Owns a device's change-block-tracking map: blksnap's byte-per-block snapshot numbers, active and read copies.
import { randomUUID } from 'node:crypto';
import { BlkError } from '../errors.js';
import { tracking } from '../params.js';

/** blksnap's block size rule: start at 2^16 and double while the count exceeds 2^21, capped at 2^26. */
/**
 * A device's change-block tracking as block status sees it: one byte per tracking block,
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

export function cbtBlockGeometry(capacity: number): { blockShift: number; blockCount: number } {
  let blockShift: number = tracking.blockMinimumShift;
  let blockCount = Math.ceil(capacity / 2 ** blockShift);
  while (blockCount > tracking.blockMaximumCount && blockShift < tracking.blockMaximumShift) {
    blockShift++;
    blockCount = Math.ceil(capacity / 2 ** blockShift);
  }
  return { blockShift, blockCount };
}

/**
 * The CBT map of one device.
 *
 * Each tracking block has one byte in each of two maps. Writes raise the *active* map's byte to the
 * active snapshot number; `switch()` (done at snapshot take) publishes the active map as the *read*
 * map that `readcbtmap` returns. A backup made at snapshot k copies the blocks whose read-map byte
 * is > k. Numbers wrap after 255 with a new generation UUID: a new generation means a full backup.
 */
export class CbtMap {
  readonly capacity: number;
  readonly blockShift: number;
  readonly blockSize: number;
  readonly blockCount: number;
  #activeMap: Uint8Array;
  #readMap: Uint8Array;
  #previousNumber = 0;
  #activeNumber = 1;
  #generationId: string = randomUUID();

  constructor(capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 0) throw new BlkError('EINVAL', `invalid device capacity ${capacity}`);
    this.capacity = capacity;
    const { blockShift, blockCount } = cbtBlockGeometry(capacity);
    this.blockShift = blockShift;
    this.blockSize = 2 ** blockShift;
    this.blockCount = blockCount;
    this.#activeMap = new Uint8Array(blockCount);
    this.#readMap = new Uint8Array(blockCount);
  }

  get generationId(): string {
    return this.#generationId;
  }

  /** The number of the last taken snapshot (blksnap's snap_number_previous): cbtinfo's changes_number. */
  get previousNumber(): number {
    return this.#previousNumber;
  }

  get activeNumber(): number {
    return this.#activeNumber;
  }

  /** Marks the blocks a write of [offset, offset+length) touches with the active number. */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    this.#set(this.#activeMap, offset, length, this.#activeNumber);
  }

  /** Marks both maps, as markdirtyblock and image writes do: active with active, read with previous. */
  markBoth(offset: number, length: number): void {
    if (length <= 0) return;
    this.#set(this.#activeMap, offset, length, this.#activeNumber);
    this.#set(this.#readMap, offset, length, this.#previousNumber);
  }

  /** The snapshot-take switch (blksnap's cbt_map_switch). */
  switch(): void {
    this.#previousNumber = this.#activeNumber;
    this.#activeNumber++;
    if (this.#activeNumber === 256) {
      this.#activeNumber = 1;
      this.#activeMap.fill(0);
      this.#generationId = randomUUID();
    } else {
      this.#readMap.set(this.#activeMap);
    }
  }

  /** Copies read-map bytes [offset, offset+length) into a new buffer (clipped to the map). */
  readMap(offset: number, length: number): Uint8Array {
    const start = Math.min(offset, this.blockCount);
    const end = Math.min(offset + length, this.blockCount);
    return this.#readMap.slice(start, end);
  }

  /** The active map (a device's view) or the read map (an image's view), as block status reads it. */
  changeMap(which: 'active' | 'read'): ChangeMap {
    const map = which === 'active' ? this.#activeMap : this.#readMap;
    return { blockSize: this.blockSize, blockCount: this.blockCount, changesNumber: this.#previousNumber, generationId: this.#generationId, byteAt: (b) => map[b] ?? 0 };
  }

  /**
   * The whole map as bytes, for a state file: capacity (8), previous and active numbers (1 each),
   * the generation UUID as text (36), then both maps.
   */
  serialize(): Buffer {
    const head = Buffer.alloc(8 + 1 + 1 + 36);
    head.writeBigUInt64LE(BigInt(this.capacity), 0);
    head[8] = this.#previousNumber;
    head[9] = this.#activeNumber;
    head.write(this.#generationId, 10, 'latin1');
    return Buffer.concat([head, this.#activeMap, this.#readMap]);
  }

  /** A map from serialize()'s bytes; EINVAL when they do not describe one (the caller starts anew). */
  static deserialize(data: Buffer): CbtMap {
    if (data.length < 46) throw new BlkError('EINVAL', 'CBT state too short');
    const map = new CbtMap(Number(data.readBigUInt64LE(0)));
    const previous = data[8] as number;
    const active = data[9] as number;
    const generation = data.toString('latin1', 10, 46);
    if (data.length !== 46 + 2 * map.blockCount) throw new BlkError('EINVAL', `CBT state of ${data.length} bytes for ${map.blockCount} blocks`);
    if (active < 1 || active > 255 || previous > 255 || (previous !== active - 1 && !(active === 1 && previous === 255))) {
      throw new BlkError('EINVAL', `CBT state with numbers ${previous} and ${active}`);
    }
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(generation)) throw new BlkError('EINVAL', 'CBT state without a generation');
    map.#previousNumber = previous;
    map.#activeNumber = active;
    map.#generationId = generation;
    map.#activeMap.set(data.subarray(46, 46 + map.blockCount));
    map.#readMap.set(data.subarray(46 + map.blockCount));
    return map;
  }

  /** A copy of the active map, for tests and diagnostics. */
  activeMapCopy(): Uint8Array {
    return this.#activeMap.slice();
  }

  #set(map: Uint8Array, offset: number, length: number, snapNumber: number): void {
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((offset + length - 1) / this.blockSize);
    if (last >= this.blockCount) {
      throw new BlkError('EINVAL', `range ${offset}+${length} lies past the CBT map of ${this.blockCount} blocks`);
    }
    for (let i = first; i <= last; i++) {
      if ((map[i] as number) < snapNumber) map[i] = snapNumber;
    }
  }
}
