// Owns an attached device: its backing store, its tracker, and the checked I/O every front end calls.
import type { Extent, Storage } from '../backing/storage.js';
import { IoFlag, type BlockDevice, type BlockDeviceFastPaths, type ChangeMap, type IncomingParts, type IoFlags, isIncomingParts, type SendSink, type SharedReads, type WriteData } from './block-device.js';
import { gathered, lengthOf } from './incoming-parts.js';
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

  /**
   * The write path. Whole data that nothing makes wait (no take holding the device, no
   * copy-on-write, its write-intent regions recorded, no FUA) lands at once without a promise where
   * the store takes it at once; pieces go to the store as they are (pwritev); parts still to come
   * land as they arrive (WriteStream) where the store can take parts. The tracker admits each write
   * once, whichever way it lands.
   */
  write(offset: number, data: WriteData, flags: IoFlags): Promise<void> | undefined {
    if (isIncomingParts(data)) return this.#writeIncoming(offset, data, flags);
    const length = lengthOf(data);
    this.#gate.enterWrite('write', offset, length);
    let admitted: Promise<void> | undefined;
    try {
      admitted = this.tracker.admitWrite(offset, length);
    } catch (e) {
      this.#gate.leave();
      return Promise.reject(e);
    }
    const fast = this.storage.fast;
    if (admitted === undefined && fast && !Array.isArray(data) && !(flags & (IoFlag.Fua | IoFlag.Background))) {
      let isDone: boolean;
      try {
        isDone = fast.writeNow(offset, data as Uint8Array);
      } catch (e) {
        this.#leave();
        return Promise.reject(e);
      }
      if (isDone) {
        this.#leave();
        return undefined;
      }
      // The store declined (the kernel near throttling writers): the admitted write lands below.
    }
    const inBackground = (flags & IoFlag.Background) !== 0;
    const land = Array.isArray(data)
      ? fast
        ? () => fast.writeChunks(offset, data as readonly Buffer[], inBackground)
        : () => this.storage.write(offset, Buffer.concat(data as Buffer[]), inBackground)
      : () => this.storage.write(offset, data as Uint8Array, inBackground);
    return this.#landAdmitted(admitted, flags, land);
  }

  /** One write whose parts land as they come (see WriteStream), or are gathered where the store cannot take parts. */
  #writeIncoming(offset: number, parts: IncomingParts, flags: IoFlags): Promise<void> {
    if (!this.storage.fast) return gathered(parts).then((data) => this.write(offset, data, flags));
    this.#gate.enterWrite('write', offset, parts.length);
    let stream: WriteStream;
    try {
      stream = new WriteStream(this.tracker, this.storage, { offset, length: parts.length, isFua: (flags & IoFlag.Fua) !== 0 }, () => this.#gate.leave());
    } catch (e) {
      this.#gate.leave();
      return Promise.reject(e);
    }
    let at = offset;
    return parts
      .deliver((part) => {
        stream.write(at, part);
        at += part.length;
      })
      .then(
        () => stream.end(),
        (e: unknown) => stream.end().then(() => Promise.reject(e)),
      );
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

  /** Admits a write that entered the gate, lands it, flushes for FUA, and leaves. */
  #tracked(offset: number, length: number, flags: IoFlags, land: () => Promise<void>): Promise<void> {
    let admitted: Promise<void> | undefined;
    try {
      admitted = this.tracker.admitWrite(offset, length);
    } catch (e) {
      this.#gate.leave();
      return Promise.reject(e);
    }
    return this.#landAdmitted(admitted, flags, land);
  }

  /** The rest of an admitted write: waits for what its admission waits for, lands it, flushes for FUA, leaves tracker and gate. */
  async #landAdmitted(admitted: Promise<void> | undefined, flags: IoFlags, land: () => Promise<void>): Promise<void> {
    try {
      if (admitted) await admitted;
      await land();
      if (flags & IoFlag.Fua) await this.storage.flush();
    } finally {
      this.#leave();
    }
  }

  /** An admitted write is done (landed or failed): out of the tracker, then out of the gate. */
  #leave(): void {
    try {
      this.tracker.endWrite();
    } finally {
      this.#gate.leave();
    }
  }
}
