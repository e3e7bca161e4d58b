// Owns an attached device: its backing store, its tracker, and the checked I/O every front end calls.
import type { Extent, Storage } from '../backing/storage.js';
import { BlkError } from '../errors.js';
import { Emitter } from '../util/emitter.js';
import { totalLength } from '../util/byte-queue.js';
import { InFlight } from '../util/in-flight.js';
import { IoFlag, type BlockDevice, type IoFlags } from './block-device.js';
import { Tracker } from './tracker.js';
import { WriteStream } from './write-stream.js';

/** Checks a request range against a size; `pastEnd` is the errno for a range beyond it. */
export function checkRange(what: string, offset: number, length: number, size: number, pastEnd: 'EINVAL' | 'ENOSPC'): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new BlkError('EINVAL', `${what}: invalid range ${offset}+${length}`);
  }
  if (offset + length > size) {
    throw new BlkError(pastEnd, `${what}: range ${offset}+${length} lies past the end (${size} bytes)`, { offset, length, size });
  }
}

/**
 * A device attached to the daemon. The daemon is the only writer of its store; every write goes
 * through the tracker (CBT marking, and the take's write gate) before it reaches the store.
 */
export class Device implements BlockDevice {
  readonly name: string;
  readonly storage: Storage;
  readonly tracker: Tracker;
  readonly canTrim = true;
  #ops = new InFlight();
  #isClosing = false;
  #closeEmitter = new Emitter<void>();
  readonly onClose = this.#closeEmitter.event;

  constructor(name: string, storage: Storage, options: { tracking?: boolean } = {}) {
    this.name = name;
    this.storage = storage;
    this.tracker = new Tracker(storage, options);
  }

  get path(): string {
    return this.storage.path;
  }

  get size(): number {
    return this.storage.size;
  }

  get isReadOnly(): boolean {
    return this.storage.isReadOnly;
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    this.#begin('read', offset, into.length, 'EINVAL');
    return this.storage.read(offset, into).finally(() => this.#end());
  }

  readNow(offset: number, into: Uint8Array): boolean {
    const storage = this.storage;
    if (!storage.readNow) return false;
    this.#begin('read', offset, into.length, 'EINVAL');
    try {
      return storage.readNow(offset, into);
    } finally {
      this.#end();
    }
  }

  /**
   * Zero-copy send of cached data. A later write may change the sent pages before the client has
   * read them off its socket; that write is concurrent with this read (the client has not got the
   * reply), so either content is a correct answer. Snapshot images do not offer this: their bytes
   * must never change once read.
   */
  sendTo(fd: number, prefix: Uint8Array, offset: number, length: number): number | null {
    const storage = this.storage;
    if (!storage.sendTo || !storage.isCached) return null;
    this.#begin('read', offset, length, 'EINVAL');
    try {
      return storage.isCached(offset, length) ? storage.sendTo(fd, prefix, offset, length) : null;
    } finally {
      this.#end();
    }
  }

  write(offset: number, data: Uint8Array, flags: IoFlags): Promise<void> {
    this.#beginWrite('write', offset, data.length);
    return this.#tracked(offset, data.length, flags, () => this.storage.write(offset, data, (flags & IoFlag.Background) !== 0));
  }

  /**
   * The write path without a promise, for when nothing can wait: no take holding the device, no
   * copy-on-write, no FUA flush, and a store that writes at once. The same tracker steps as write().
   */
  writeNow(offset: number, data: Uint8Array, flags: IoFlags): boolean {
    const tracker = this.tracker;
    const storage = this.storage;
    if (flags & (IoFlag.Fua | IoFlag.Background) || tracker.isHeld || tracker.diffArea !== null || !storage.writeNow) return false;
    this.#beginWrite('write', offset, data.length);
    try {
      tracker.beginWrite();
      try {
        // Marked first, as every write is; should the store decline, write() marks again (the same number).
        tracker.markWrite(offset, data.length);
        return storage.writeNow(offset, data);
      } finally {
        tracker.endWrite();
      }
    } finally {
      this.#end();
    }
  }

  /** One write whose data comes in parts (see WriteStream); the caller must end() it. */
  streamWrite(offset: number, length: number, flags: IoFlags): WriteStream {
    this.#beginWrite('write', offset, length);
    try {
      return new WriteStream(this.tracker, this.storage, { offset, length, isFua: (flags & IoFlag.Fua) !== 0 }, () => this.#end());
    } catch (e) {
      this.#end();
      throw e;
    }
  }

  writeChunks(offset: number, chunks: readonly Buffer[], flags: IoFlags): Promise<void> {
    const length = totalLength(chunks);
    const storage = this.storage;
    if (!storage.writeChunks) return this.write(offset, Buffer.concat(chunks as Buffer[]), flags);
    this.#beginWrite('write', offset, length);
    const inBackground = (flags & IoFlag.Background) !== 0;
    return this.#tracked(offset, length, flags, () => (storage.writeChunks as NonNullable<Storage['writeChunks']>).call(storage, offset, chunks, inBackground));
  }

  zero(offset: number, length: number, flags: IoFlags): Promise<void> {
    this.#beginWrite('write zeroes', offset, length);
    const mayTrim = (flags & IoFlag.MayTrim) !== 0;
    const fastOnly = (flags & IoFlag.FastZero) !== 0;
    return this.#tracked(offset, length, flags, () => this.storage.zero(offset, length, mayTrim, fastOnly));
  }

  trim(offset: number, length: number, flags: IoFlags): Promise<void> {
    this.#beginWrite('trim', offset, length);
    return this.#tracked(offset, length, flags, () => this.storage.trim(offset, length));
  }

  flush(): Promise<void> {
    this.#begin('flush', 0, 0, 'EINVAL');
    return this.storage.flush().finally(() => this.#end());
  }

  extents(offset: number, length: number, maximumCount: number): Promise<Extent[]> {
    this.#begin('block status', offset, length, 'EINVAL');
    return this.storage.extents(offset, length, maximumCount).finally(() => this.#end());
  }

  cache(offset: number, length: number): Promise<void> {
    this.#begin('cache', offset, length, 'EINVAL');
    return this.storage.cache(offset, length).finally(() => this.#end());
  }

  /** Marks ranges dirty in both CBT maps (markdirtyblock). */
  markDirty(ranges: ReadonlyArray<{ offset: number; length: number }>): void {
    for (const r of ranges) checkRange('markdirtyblock', r.offset, r.length, this.tracker.cbt.capacity, 'EINVAL');
    for (const r of ranges) this.tracker.cbt.markBoth(r.offset, r.length);
  }

  /** Detach: refuses new I/O, waits for what is in flight, tells front ends, closes the store. */
  async close(): Promise<void> {
    if (this.#isClosing) return;
    this.#isClosing = true;
    await this.#ops.idle();
    this.#closeEmitter.fire();
    await this.storage.close();
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
      this.#end();
    }
  }

  #beginWrite(what: string, offset: number, length: number): void {
    if (this.isReadOnly) throw new BlkError('EPERM', `${what}: device ${this.name} is read-only`);
    this.#begin(what, offset, length, 'ENOSPC');
  }

  #begin(what: string, offset: number, length: number, pastEnd: 'EINVAL' | 'ENOSPC'): void {
    if (this.#isClosing) throw new BlkError('ESHUTDOWN', `${what}: device ${this.name} is being detached`);
    checkRange(what, offset, length, this.size, pastEnd);
    this.#ops.enter();
  }

  #end(): void {
    this.#ops.leave();
  }
}
