// Owns an attached device: its backing store, its tracker, and the checked I/O every front end calls.
import type { Extent, Storage } from '../backing/storage.js';
import { totalLength } from '../util/byte-queue.js';
import { IoFlag, type BlockDevice, type BlockDeviceFastPaths, type ChangeMap, type IoFlags, type SendSink, type SharedReads } from './block-device.js';
import { RequestGate, checkRange } from './request-gate.js';
import { Tracker, type TrackerOptions } from './tracker.js';
import { WriteStream } from './write-stream.js';

/**
 * A device attached to the daemon. The daemon is the only writer of its store; every write goes
 * through the tracker (CBT marking, and the take's write gate) before it reaches the store.
 */
export class Device implements BlockDevice, BlockDeviceFastPaths {
  readonly name: string;
  readonly storage: Storage;
  readonly tracker: Tracker;
  readonly canTrim = true;
  /** A device's own methods are its fast paths: each declines where its store cannot. */
  readonly fast: BlockDeviceFastPaths = this;
  #gate: RequestGate;
  readonly onClose: RequestGate['onClose'];

  constructor(name: string, storage: Storage, options: TrackerOptions = {}) {
    this.name = name;
    this.storage = storage;
    this.tracker = new Tracker(storage, options);
    this.#gate = new RequestGate(() => `device ${name}`, () => storage.size, () => storage.can.isReadOnly);
    this.onClose = this.#gate.onClose;
  }

  get path(): string {
    return this.storage.path;
  }

  get size(): number {
    return this.storage.size;
  }

  get isReadOnly(): boolean {
    return this.storage.can.isReadOnly;
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.#gate.around('read', offset, into.length, () => this.storage.read(offset, into));
  }

  readNow(offset: number, into: Uint8Array): boolean {
    const fast = this.storage.fast;
    if (!fast) return false;
    return this.#gate.during('read', offset, into.length, () => fast.readNow(offset, into));
  }

  /**
   * Zero-copy send of cached data. A later write may change the sent pages before the client has
   * read them off its socket; that write is concurrent with this read (the client has not got the
   * reply), so either content is a correct answer. Snapshot images hold such writes back until
   * the client has read what was sent (DiffArea.sendImageNow).
   */
  sendTo(sink: SendSink, prefix: Uint8Array, offset: number, length: number): number | null {
    const fast = this.storage.fast;
    if (!fast) return null;
    return this.#gate.during('read', offset, length, () => (fast.isCached(offset, length) ? fast.sendTo(sink.fd, prefix, offset, length) : null));
  }

  /** Reads of a device need nothing of it but the store's bytes: a read racing a write may see either. */
  sharedReads(): SharedReads | null {
    const fd = this.storage.fast?.readDescriptor?.();
    return fd === undefined ? null : { fd };
  }

  write(offset: number, data: Uint8Array, flags: IoFlags): Promise<void> {
    this.#gate.enterWrite('write', offset, data.length);
    return this.#tracked(offset, data.length, flags, () => this.storage.write(offset, data, (flags & IoFlag.Background) !== 0));
  }

  /**
   * The write path without a promise, for when nothing can wait: no take holding the device, no
   * copy-on-write, no FUA flush, and a store that writes at once. The same tracker steps as write().
   */
  writeNow(offset: number, data: Uint8Array, flags: IoFlags): boolean {
    const tracker = this.tracker;
    const fast = this.storage.fast;
    if (flags & (IoFlag.Fua | IoFlag.Background) || !fast || !tracker.admitsAtOnce(offset, data.length)) return false;
    this.#gate.enterWrite('write', offset, data.length);
    try {
      // Admitted as every write is (gate, mark, write intent; nothing waits by the checks above).
      // Should the store decline, write() marks again (the same number).
      const admitted = tracker.admitWrite(offset, data.length);
      if (admitted !== undefined) {
        // Cannot happen while the checks above hold; if it did, the admission ends on its own.
        admitted.finally(() => tracker.endWrite()).catch(() => undefined);
        return false;
      }
      try {
        return fast.writeNow(offset, data);
      } finally {
        tracker.endWrite();
      }
    } finally {
      this.#gate.leave();
    }
  }

  /** One write whose data comes in parts (see WriteStream); the caller must end() it. */
  streamWrite(offset: number, length: number, flags: IoFlags): WriteStream {
    this.#gate.enterWrite('write', offset, length);
    try {
      return new WriteStream(this.tracker, this.storage, { offset, length, isFua: (flags & IoFlag.Fua) !== 0 }, () => this.#gate.leave());
    } catch (e) {
      this.#gate.leave();
      throw e;
    }
  }

  writeChunks(offset: number, chunks: readonly Buffer[], flags: IoFlags): Promise<void> {
    const length = totalLength(chunks);
    const fast = this.storage.fast;
    if (!fast) return this.write(offset, Buffer.concat(chunks as Buffer[]), flags);
    this.#gate.enterWrite('write', offset, length);
    const inBackground = (flags & IoFlag.Background) !== 0;
    return this.#tracked(offset, length, flags, () => fast.writeChunks(offset, chunks, inBackground));
  }

  zero(offset: number, length: number, flags: IoFlags): Promise<void> {
    this.#gate.enterWrite('write zeroes', offset, length);
    const mayTrim = (flags & IoFlag.MayTrim) !== 0;
    const fastOnly = (flags & IoFlag.FastZero) !== 0;
    return this.#tracked(offset, length, flags, () => this.storage.zero(offset, length, mayTrim, fastOnly));
  }

  trim(offset: number, length: number, flags: IoFlags): Promise<void> {
    this.#gate.enterWrite('trim', offset, length);
    return this.#tracked(offset, length, flags, () => this.storage.trim(offset, length));
  }

  flush(): Promise<void> {
    return this.#gate.around('flush', 0, 0, () => this.storage.flush());
  }

  extents(offset: number, length: number, maximumCount: number): Promise<Extent[]> {
    return this.#gate.around('block status', offset, length, () => this.storage.extents(offset, length, maximumCount));
  }

  cache(offset: number, length: number): Promise<void> {
    return this.#gate.around('cache', offset, length, () => this.storage.cache(offset, length));
  }

  /** The active map: every write so far, with the number of the snapshot it came before. */
  changes(): ChangeMap | null {
    return this.tracker.isTracking ? this.tracker.cbt.changeMap('active') : null;
  }

  /** Marks ranges dirty in both CBT maps (markdirtyblock); resolves once that is in the write-intent record. */
  async markDirty(ranges: ReadonlyArray<{ offset: number; length: number }>): Promise<void> {
    for (const r of ranges) checkRange('markdirtyblock', r.offset, r.length, this.tracker.cbt.capacity, 'EINVAL');
    const recorded = ranges.map((r) => this.tracker.markBoth(r.offset, r.length));
    await Promise.all(recorded);
  }

  /** Detach: refuses new I/O, waits for what is in flight, tells front ends, closes the store. */
  async close(): Promise<void> {
    if (await this.#gate.close()) await this.storage.close();
  }

  async #tracked(offset: number, length: number, flags: IoFlags, land: () => Promise<void>): Promise<void> {
    try {
      const admitted = this.tracker.admitWrite(offset, length);
      try {
        if (admitted) await admitted;
        await land();
        if (flags & IoFlag.Fua) await this.storage.flush();
      } finally {
        this.tracker.endWrite();
      }
    } finally {
      this.#gate.leave();
    }
  }
}
