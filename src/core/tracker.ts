// Owns the write path's filter state of one device: the CBT map, the write gate used at take, in-flight counts.
import type { Storage } from '../backing/storage.js';
import { BlkError } from '../errors.js';
import { CbtMap } from './cbt-map.js';
import type { DiffArea } from './diff-area.js';

/** Where a tracker's map came from (cbtinfo's origin). */
export type TrackerOrigin = { kind: 'new'; reason: string } | { kind: 'restored' };

export interface TrackerOptions {
  tracking?: boolean;
  /** The map as saved at a clean stop; used when the capacity is still the same. */
  restored?: CbtMap;
  /** Why the map is new (no state, a damaged state file, a crash, a changed store). */
  newReason?: string;
}

/**
 * blksnap's tracker: every write of a device passes `beginWrite()` / `endWrite()` around its
 * CBT marking and store I/O. `hold()` stops admitting new writes and resolves when the ones in
 * flight are done, which is what makes a take atomic; `release()` lets the held writers go on.
 */
export class Tracker {
  #storage: Storage;
  #cbt: CbtMap;
  readonly isTracking: boolean;
  /** Copy-on-write of the taken snapshot the device belongs to; null when there is none. */
  diffArea: DiffArea | null = null;
  #snapshotId: string | null = null;
  #writesInFlight = 0;
  #drainWaiters: Array<() => void> = [];
  #held: Promise<void> | null = null;
  #releaseHeld: (() => void) | null = null;

  /** Where the map came from: a new one (and why), or restored from the state of a clean stop. */
  readonly origin: TrackerOrigin;

  constructor(storage: Storage, options: TrackerOptions = {}) {
    this.#storage = storage;
    const restored = options.restored;
    this.#cbt = restored && restored.capacity === storage.size ? restored : new CbtMap(storage.size);
    this.origin = restored && this.#cbt === restored ? { kind: 'restored' } : { kind: 'new', reason: restored ? `capacity changed from ${restored.capacity} to ${storage.size} bytes` : (options.newReason ?? 'first attached') };
    this.isTracking = options.tracking ?? true;
  }

  /** Id of the snapshot the device belongs to (created or taken); a device is in at most one. */
  get snapshotId(): string | null {
    return this.#snapshotId;
  }

  /** The device joins a snapshot; EBUSY when it belongs to another one. */
  joinSnapshot(id: string, deviceName: string): void {
    if (this.#snapshotId !== null) throw new BlkError('EBUSY', `device ${deviceName} already belongs to snapshot ${this.#snapshotId}`);
    this.#snapshotId = id;
  }

  /** The device leaves snapshot `id` (destroyed, or not created after all); another snapshot's membership stays. */
  leaveSnapshot(id: string): void {
    if (this.#snapshotId === id) this.#snapshotId = null;
  }

  get cbt(): CbtMap {
    return this.#cbt;
  }

  /** True while a take holds the device: new writes wait (beginWrite returns a promise). */
  get isHeld(): boolean {
    return this.#held !== null;
  }

  get writesInFlight(): number {
    return this.#writesInFlight;
  }

  /** Admits a write. Returns a promise only while a take holds the device (the fast path allocates nothing). */
  beginWrite(): Promise<void> | undefined {
    if (this.#held === null) {
      this.#writesInFlight++;
      return undefined;
    }
    return this.#held.then(() => this.beginWrite());
  }

  endWrite(): void {
    this.#writesInFlight--;
    if (this.#writesInFlight === 0 && this.#drainWaiters.length > 0) {
      const waiters = this.#drainWaiters;
      this.#drainWaiters = [];
      for (const wake of waiters) wake();
    }
  }

  /**
   * Admits a write of [offset, offset+length): passes the take's gate, marks the CBT, and keeps
   * the originals of the chunks it touches when a snapshot is taken. Returns a promise only when
   * one of those has to wait. The write is in flight from here: endWrite() once its data landed.
   */
  admitWrite(offset: number, length: number): Promise<void> | undefined {
    const gate = this.beginWrite();
    if (gate === undefined && this.diffArea === null) {
      try {
        this.markWrite(offset, length);
      } catch (e) {
        this.endWrite();
        throw e;
      }
      return undefined;
    }
    return this.#admitLater(gate, offset, length);
  }

  /** Rejects only after the gate was passed (the write is in flight: the caller ends it). */
  async #admitLater(gate: Promise<void> | undefined, offset: number, length: number): Promise<void> {
    if (gate) await gate;
    this.markWrite(offset, length);
    const cow = this.diffArea;
    if (cow) await cow.copyOnWrite(offset, length);
  }

  /** Marks a write in the active map (after beginWrite, before the data lands). */
  markWrite(offset: number, length: number): void {
    if (this.isTracking) this.#cbt.mark(offset, length);
  }

  /** Stops admitting writes and waits for those in flight. */
  hold(): Promise<void> {
    if (this.#held !== null) throw new BlkError('EBUSY', 'the device is already held by a take in progress');
    this.#held = new Promise((resolve) => (this.#releaseHeld = resolve));
    return this.drain();
  }

  /** Resolves when no write is in flight. */
  drain(): Promise<void> {
    if (this.#writesInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /** Lets held writers in again. */
  release(): void {
    const release = this.#releaseHeld;
    this.#held = null;
    this.#releaseHeld = null;
    release?.();
  }

  /**
   * The CBT part of a take: a changed capacity first resets the map (new generation), then the
   * active map is switched. Call with the device held; `capacity` as probed during the hold.
   */
  switchCbt(capacity: number = this.#storage.probeSize()): void {
    if (capacity !== this.#cbt.capacity) this.#cbt = new CbtMap(capacity);
    this.#cbt.switch();
  }
}
