// Owns where every chunk of the repository is: read from the packs' indexes into typed arrays and an
// open-addressing hash table on the digest (no object per chunk), so a lookup is a few array reads
// and a repository of millions of chunks stays a few dozen bytes per chunk.
import { BlkError } from '../errors.js';
import type { Backend } from './backend.js';
import type { ObjectCipher } from './cipher.js';
import { digestHash, digestsEqual, isZeroDigest } from './digest.js';
import { names, TEMP_MARK } from './layout.js';
import { IDX_ENTRY, readPackIndex } from './pack.js';
import { readMarked } from './pending-deletion.js';

export interface ChunkLocation {
  pack: string;
  offset: number;
  storedLength: number;
  flags: number;
  size: number;
}

/**
 * A chunk to load: where it is (null: a chunk of zeros; `name` is its pack's object, `file` the
 * local file that holds it, where there is one), its digest, and its place on the device.
 */
export interface LoadItem {
  where: (ChunkLocation & { name: string; file: string | null }) | null;
  digest: Uint8Array;
  /** The chunk's offset on the device (a restore writes it there; errors name it). */
  offset: number;
  length: number;
  /** Further offsets on the device holding the same content: a restore writes it there too. */
  copies?: number[];
}

export class ChunkIndex {
  #digests: Uint8Array;
  #pack: Uint32Array;
  #offset: Float64Array;
  #stored: Uint32Array;
  #size: Uint32Array;
  #flags: Uint8Array;
  #count = 0;
  /** Slot → entry + 1 (0: empty). */
  #table: Uint32Array;
  readonly packs: string[] = [];
  #packNumbers = new Map<string, number>();

  constructor(capacity = 1024) {
    this.#digests = new Uint8Array(capacity * 32);
    this.#pack = new Uint32Array(capacity);
    this.#offset = new Float64Array(capacity);
    this.#stored = new Uint32Array(capacity);
    this.#size = new Uint32Array(capacity);
    this.#flags = new Uint8Array(capacity);
    this.#table = new Uint32Array(capacity * 2);
  }

  get count(): number {
    return this.#count;
  }

  /**
   * Every pack index of the repository. A damaged one is an error naming it; with `problems`, it is
   * noted there and left out (its chunks count as missing), so verify and restore can go on. Packs
   * in `skip` are left out (a writer never reuses what a prune marked); packs in `last` are read
   * after the others, so a chunk also found elsewhere is located there (a repacked chunk's new home).
   */
  static async load(backend: Backend, cipher: ObjectCipher, o: { problems?: string[]; skip?: Set<string>; last?: Set<string> } = {}): Promise<ChunkIndex> {
    const { problems, skip, last } = o;
    const index = new ChunkIndex();
    const ids = (await packIds(backend)).filter((id) => !skip?.has(id));
    const ordered = last ? [...ids.filter((id) => !last.has(id)), ...ids.filter((id) => last.has(id))] : ids;
    // Read a few ahead (in a bucket with no cache, as on a new host, each is a request of a round
    // trip), added in order: the first pack holding a chunk is where it is found.
    const reads = new Map<number, Promise<{ data: Buffer; count: number }>>();
    const readAhead = (i: number): void => {
      const id = ordered[i];
      if (id === undefined || reads.has(i)) return;
      const read = readPackIndex(backend, id, cipher);
      read.catch(() => undefined); // heard below, in order
      reads.set(i, read);
    };
    try {
      for (const [i, id] of ordered.entries()) {
        for (let k = i; k < i + backend.requestsAtOnce; k++) readAhead(k);
        const read = reads.get(i) as Promise<{ data: Buffer; count: number }>;
        reads.delete(i);
        try {
          index.addIdx(id, await read);
        } catch (e) {
          if (!problems) throw e;
          problems.push((e as Error).message);
        }
      }
    } finally {
      // A failure leaves no read running unheard.
      await Promise.allSettled(reads.values());
    }
    return index;
  }

  /** Every pack index for a reader (restore, verify, a backup served): a chunk in a marked pack is located there only where no other pack holds it. */
  static async loadForReading(backend: Backend, cipher: ObjectCipher, problems?: string[]): Promise<ChunkIndex> {
    const marked = await readMarked(backend);
    return ChunkIndex.load(backend, cipher, { ...(problems ? { problems } : {}), last: marked.packs });
  }

  /** Adds every entry of a checked index file (readIdxFile) straight from its bytes: no object per entry. */
  addIdx(id: string, idx: { data: Buffer; count: number }): void {
    while ((this.#count + idx.count) * 2 > this.#table.length) this.#grow();
    const p = this.#packNumber(id);
    const data = idx.data;
    for (let i = 0; i < idx.count; i++) {
      const at = 16 + i * IDX_ENTRY;
      const offset = data.readUInt32LE(at + 32) + data.readUInt32LE(at + 36) * 2 ** 32;
      this.#add(data, at, p, offset, data.readUInt32LE(at + 40), data.readUInt16LE(at + 44), data.readUInt32LE(at + 48));
    }
  }

  /** The entry of the digest at `digests[at..at+32)`, or -1. */
  find(digests: Uint8Array, at = 0): number {
    const mask = this.#table.length - 1;
    for (let slot = digestHash(digests, at) & mask; ; slot = (slot + 1) & mask) {
      const e = this.#table[slot] as number;
      if (e === 0) return -1;
      if (digestsEqual(this.#digests, (e - 1) * 32, digests, at)) return e - 1;
    }
  }

  has(digests: Uint8Array, at = 0): boolean {
    return this.find(digests, at) >= 0;
  }

  /** Adds a chunk (the first location of a digest wins); returns its entry. */
  add(digests: Uint8Array, at: number, where: ChunkLocation): number {
    if ((this.#count + 1) * 2 > this.#table.length) this.#grow();
    return this.#add(digests, at, this.#packNumber(where.pack), where.offset, where.storedLength, where.flags, where.size);
  }

  /** add() once the table has room: the entry of the digest, new or found. */
  #add(digests: Uint8Array, at: number, pack: number, offset: number, stored: number, flags: number, size: number): number {
    const found = this.find(digests, at);
    if (found >= 0) return found;
    const e = this.#count++;
    this.#digests.set(digests.subarray(at, at + 32), e * 32);
    this.#pack[e] = pack;
    this.#offset[e] = offset;
    this.#stored[e] = stored;
    this.#size[e] = size;
    this.#flags[e] = flags;
    this.#insert(e);
    return e;
  }

  location(e: number): ChunkLocation {
    return { pack: this.packs[this.#pack[e] as number] as string, offset: this.#offset[e] as number, storedLength: this.#stored[e] as number, flags: this.#flags[e] as number, size: this.#size[e] as number };
  }

  /** Entry `e`'s pack (its number: packs[n]), its record's offset there and stored length, without an object per look (a restore's planning). */
  packNumberOf(e: number): number {
    return this.#pack[e] as number;
  }

  offsetOf(e: number): number {
    return this.#offset[e] as number;
  }

  storedLengthOf(e: number): number {
    return this.#stored[e] as number;
  }

  /** The location of a digest; EIO naming it when the repository lacks it. */
  require(digests: Uint8Array, at = 0): ChunkLocation {
    const e = this.find(digests, at);
    if (e < 0) throw new BlkError('EIO', `chunk ${Buffer.from(digests.subarray(at, at + 32)).toString('hex')} is missing from the repository`);
    return this.location(e);
  }

  /** The packs holding the chunks a device's index names (its digests), each once. */
  packsOf(digests: Uint8Array): string[] {
    const packs = new Set<string>();
    for (let at = 0; at < digests.length; at += 32) {
      if (isZeroDigest(digests, at)) continue;
      const e = this.find(digests, at);
      if (e >= 0) packs.add(this.location(e).pack);
    }
    return [...packs];
  }

  /** Chunks [first, first+n) of a device's index as load items; EIO naming the offset of a chunk the repository lacks. */
  loadItems(backend: Backend, device: { size: number; chunkSize: number; digests: Uint8Array }, first: number, n: number): LoadItem[] {
    const items: LoadItem[] = [];
    for (let c = first; c < first + n; c++) {
      const offset = c * device.chunkSize;
      // A copy: a view would take the whole digest array with it to the worker (a clone per task).
      const digest = new Uint8Array(device.digests.subarray(c * 32, c * 32 + 32));
      let where: LoadItem['where'] = null;
      if (!isZeroDigest(device.digests, c * 32)) {
        const at = this.find(device.digests, c * 32);
        if (at < 0) throw new BlkError('EIO', `the chunk at offset ${offset}: chunk ${Buffer.from(digest).toString('hex')} is missing from the repository`);
        const location = this.location(at);
        const name = names.pack(location.pack);
        where = { ...location, name, file: backend.localPath(name) };
      }
      items.push({ where, digest, offset, length: Math.min(device.chunkSize, device.size - offset) });
    }
    return items;
  }

  #packNumber(pack: string): number {
    let p = this.#packNumbers.get(pack);
    if (p === undefined) {
      p = this.packs.length;
      this.packs.push(pack);
      this.#packNumbers.set(pack, p);
    }
    return p;
  }

  #insert(e: number): void {
    const mask = this.#table.length - 1;
    let slot = digestHash(this.#digests, e * 32) & mask;
    while (this.#table[slot] !== 0) slot = (slot + 1) & mask;
    this.#table[slot] = e + 1;
  }

  #grow(): void {
    const capacity = this.#pack.length * 2;
    const grow = <T extends Uint8Array | Uint32Array | Float64Array>(a: T, n: number): T => {
      const b = new (a.constructor as new (n: number) => T)(n);
      b.set(a as never);
      return b;
    };
    this.#digests = grow(this.#digests, capacity * 32);
    this.#pack = grow(this.#pack, capacity);
    this.#offset = grow(this.#offset, capacity);
    this.#stored = grow(this.#stored, capacity);
    this.#size = grow(this.#size, capacity);
    this.#flags = grow(this.#flags, capacity);
    this.#table = new Uint32Array(capacity * 2);
    for (let e = 0; e < this.#count; e++) this.#insert(e);
  }
}

/** Ids of the complete packs (an index in place; a pack still being written has neither name). */
export async function packIds(backend: Backend): Promise<string[]> {
  return (await backend.list(names.chunks)).filter((n) => n.endsWith('.idx') && !n.includes(TEMP_MARK)).map((n) => n.slice(0, -4)).sort();
}
