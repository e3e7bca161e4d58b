// Owns a device's write-intent record, as md's write-intent bitmap does it: the regions that may have
// been written since the tracker was last saved. A region is durably recorded before the first write
// into it goes on; the writes waiting at one moment share one record write (group commit).
import { BlkError, toBlkError } from '../errors.js';

/** Where the record is kept. One byte per region in `regions`: 1 = may have been written. */
export interface IntentRecord {
  /** Makes `regions` the durable record; resolves once it is (fdatasync done). */
  write(regions: Uint8Array, regionSize: number): Promise<void>;
}

interface Waiters {
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

function waiters(): Waiters {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // a record write nobody waits for may fail unobserved
  return { promise, resolve, reject };
}

/**
 * The write-intent record of one device.
 *
 * `admit()` is called with the CBT mark of every write, in the same turn. A write into a region
 * already in the durable record goes on at once; otherwise it waits for the next record write,
 * which carries every region asked for until it starts. A save of the map (`beginSave()` in the
 * turn the map is serialized, `endSave()` once that copy is durable) lets the regions not written
 * since leave the record again, so after a crash only regions written during about the last save
 * interval get extra marks.
 */
export class WriteIntent {
  readonly regionSize: number;
  #regionCount: number;
  /** Regions the record on disk holds, as far as writes may rely on it. */
  #durable: Uint8Array;
  /** Regions the next record write will hold. */
  #wanted: Uint8Array;
  /** Regions admitted since the current save began. */
  #touched: Uint8Array;
  #isTouched = false;
  #record: IntentRecord;
  /** The record write under way and the regions it carries. */
  #writing: { regions: Uint8Array; done: Waiters } | null = null;
  /** Writes that wait for the record write after the one under way. */
  #next: Waiters | null = null;
  /** Record writes done: the metadata writes the benchmark counts. */
  recordWrites = 0;

  constructor(capacity: number, regionSize: number, record: IntentRecord) {
    if (!Number.isSafeInteger(regionSize) || regionSize < 4096) throw new BlkError('EINVAL', `write-intent region of ${regionSize} bytes: at least 4096`);
    this.regionSize = regionSize;
    this.#record = record;
    this.#regionCount = Math.ceil(capacity / regionSize);
    this.#durable = new Uint8Array(this.#regionCount);
    this.#wanted = new Uint8Array(this.#regionCount);
    this.#touched = new Uint8Array(this.#regionCount);
  }

  get regionCount(): number {
    return this.#regionCount;
  }

  /** True when a write was admitted since the current save began: the map needs saving. */
  get isTouched(): boolean {
    return this.#isTouched;
  }

  /** Regions the record holds or will hold: what a crash now would mark. */
  get recordedCount(): number {
    let n = 0;
    for (let r = 0; r < this.#regionCount; r++) n += this.#wanted[r] as number;
    return n;
  }

  /** True when a write of this range would go on at once (every region durably recorded). */
  covers(offset: number, length: number): boolean {
    const [first, last] = this.#regions(offset, length);
    for (let r = first; r <= last; r++) if (this.#durable[r] === 0) return false;
    return true;
  }

  /**
   * A write of [offset, offset+length) was marked in the map: undefined when it may go on at once,
   * else the record write it must wait for (rejects when the record cannot be written).
   */
  admit(offset: number, length: number): Promise<void> | undefined {
    if (length <= 0) return undefined;
    const [first, last] = this.#regions(offset, length);
    let waitsNext = false;
    let waitsWriting = false;
    for (let r = first; r <= last; r++) {
      this.#touched[r] = 1;
      if (this.#durable[r] === 1) continue;
      if (this.#wanted[r] === 0) {
        this.#wanted[r] = 1;
        waitsNext = true;
      } else if (this.#writing !== null && this.#writing.regions[r] === 1) {
        waitsWriting = true;
      } else {
        waitsNext = true;
      }
    }
    this.#isTouched = true;
    if (waitsNext) return this.#nextWrite();
    if (waitsWriting) return (this.#writing as { done: Waiters }).done.promise;
    return undefined;
  }

  /** Writes the record as it stands now (e.g. empty, at attach); resolves when it is durable. */
  writeNow(): Promise<void> {
    return this.#nextWrite();
  }

  /** A save begins: call in the turn the map is serialized. Writes admitted from now on stay recorded after it. */
  beginSave(): void {
    this.#touched.fill(0);
    this.#isTouched = false;
  }

  /** The map serialized at beginSave() is durable: regions not written since leave the record. */
  endSave(): Promise<void> {
    let isCleared = false;
    for (let r = 0; r < this.#regionCount; r++) {
      if (this.#wanted[r] === 1 && this.#touched[r] === 0) {
        this.#wanted[r] = 0;
        this.#durable[r] = 0; // at once: a later write into it asks for the region again
        isCleared = true;
      }
    }
    return isCleared ? this.#nextWrite() : Promise.resolve();
  }

  /** The device's capacity changed (at a take): regions are kept or dropped, new ones start unrecorded. */
  resize(capacity: number): void {
    const count = Math.ceil(capacity / this.regionSize);
    if (count === this.#regionCount) return;
    const grow = (a: Uint8Array): Uint8Array => {
      const b = new Uint8Array(count);
      b.set(a.subarray(0, Math.min(count, a.length)));
      return b;
    };
    this.#durable = grow(this.#durable);
    this.#wanted = grow(this.#wanted);
    this.#touched = grow(this.#touched);
    this.#regionCount = count;
  }

  #regions(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.regionSize);
    const last = Math.min(Math.floor((offset + Math.max(length, 1) - 1) / this.regionSize), this.#regionCount - 1);
    return [first, last];
  }

  #nextWrite(): Promise<void> {
    if (this.#next !== null) return this.#next.promise;
    const next = waiters();
    this.#next = next;
    // Started after the current turn, so the writes admitted in it (one batch of requests) share it.
    if (this.#writing === null) queueMicrotask(() => this.#startWrite());
    return next.promise;
  }

  #startWrite(): void {
    if (this.#writing !== null || this.#next === null) return;
    const done = this.#next;
    this.#next = null;
    const regions = this.#wanted.slice();
    this.#writing = { regions, done };
    this.#record.write(regions, this.regionSize).then(
      () => {
        this.recordWrites++;
        // Durable now: what this write held and is still wanted (a region cleared meanwhile stays out).
        const n = Math.min(regions.length, this.#regionCount);
        for (let r = 0; r < n; r++) this.#durable[r] = (regions[r] as number) & (this.#wanted[r] as number);
        this.#finishWrite();
        done.resolve();
      },
      (e: unknown) => {
        this.#finishWrite();
        done.reject(new BlkError('EIO', `cannot record write intent: ${toBlkError(e).message}`));
      },
    );
  }

  #finishWrite(): void {
    this.#writing = null;
    if (this.#next !== null) this.#startWrite();
  }
}
