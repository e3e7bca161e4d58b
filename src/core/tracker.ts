// Owns the write path's filter state of one device: the CBT map, the write gate used at take, in-flight counts.
import type { Storage } from '../backing/storage.js';
import { BlkError } from '../errors.js';
import { CbtMap } from '../cbt/cbt-map.js';
import type { DiffArea } from './diff-area.js';
import type { WriteIntent } from '../cbt/write-intent.js';
import type { TrackerOrigin } from '../cbt/cbt-keeper.js';

export type { TrackerOrigin };

export interface TrackerOptions {
  tracking?: boolean;
  /** The map to start from (restored, recovered, or new and already saved); used when the capacity is still the same. */
  map?: CbtMap;
  /** Where `map` came from (default: restored); without a map, why the new one is new (default: first attached). */
  origin?: TrackerOrigin;
  /** The write-intent record every mark passes (durable tracking); none: the map lives in memory only. */
  intent?: WriteIntent;
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

  #intent: WriteIntent | null;

  /** Where the map came from: a new one (and why), restored as saved at a clean stop, or recovered after a crash. */
  readonly origin: TrackerOrigin;

  constructor(storage: Storage, options: TrackerOptions = {}) {
    this.#storage = storage;
    const { map, origin } = options;
    if (map && map.capacity === storage.size) {
      this.#cbt = map;
      this.origin = origin ?? { kind: 'restored' };
    } else {
      this.#cbt = new CbtMap(storage.size);
      this.origin = { kind: 'new', reason: map ? `capacity changed from ${map.capacity} to ${storage.size} bytes` : origin?.kind === 'new' ? origin.reason : 'first attached' };
    }
    this.isTracking = options.tracking ?? true;
    this.#intent = this.isTracking ? (options.intent ?? null) : null;
  }

  /** The write-intent record, when tracking is durable. */
  get intent(): WriteIntent | null {
    return this.#intent;
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
   * Admits a write of [offset, offset+length): passes the take's gate, marks the CBT (and, with durable
   * tracking, waits until its regions are in the write-intent record), and keeps the originals of
   * the chunks it touches when a snapshot is taken. Returns a promise only when one of those has to
   * wait. The write is in flight from here: endWrite() once its data landed.
   */
  admitWrite(offset: number, length: number): Promise<void> | undefined {
    const gate = this.beginWrite();
    if (gate !== undefined) return this.#admitAfterGate(gate, offset, length);
    let recorded: Promise<void> | undefined;
    try {
      recorded = this.#mark(offset, length);
    } catch (e) {
      this.endWrite();
      throw e;
    }
    if (recorded === undefined && this.diffArea === null) return undefined;
    return this.#copyAfterRecord(recorded, offset, length);
  }

  /** Rejects only after the gate was passed (the write is in flight: the caller ends it). */
  async #admitAfterGate(gate: Promise<void>, offset: number, length: number): Promise<void> {
    await gate;
    await this.#copyAfterRecord(this.#mark(offset, length), offset, length);
  }

  async #copyAfterRecord(recorded: Promise<void> | undefined, offset: number, length: number): Promise<void> {
    if (recorded) await recorded;
    // A take drains this write before it sets a diff area, so the one read here is the one admitted under.
    const cow = this.diffArea;
    if (cow) await cow.copyOnWrite(offset, length);
  }

  /** Marks a write in the active map (after beginWrite, before the data lands), in the same turn as its write intent. */
  #mark(offset: number, length: number): Promise<void> | undefined {
    if (!this.isTracking) return undefined;
    this.#cbt.mark(offset, length);
    return this.#intent?.admit(offset, length);
  }

  /**
   * Marks both maps (markdirtyblock, snapshot image writes): the active map with the active number,
   * the read map with the previous one. Resolves once the regions are in the write-intent record.
   */
  markBoth(offset: number, length: number): Promise<void> | undefined {
    this.#cbt.markBoth(offset, length);
    return this.isTracking ? this.#intent?.admit(offset, length) : undefined;
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
    if (capacity !== this.#cbt.capacity) {
      this.#cbt = new CbtMap(capacity);
      this.#intent?.resize(capacity);
    }
    this.#cbt.switch();
  }
}
