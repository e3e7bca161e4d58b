// Owns a snapshot image: the read-write block device showing a device as it was at the take.
import type { Extent } from '../backing/storage.js';
import { BlkError } from '../errors.js';
import { Emitter } from '../util/emitter.js';
import { InFlight } from '../util/in-flight.js';
import type { BlockDevice, IoFlags } from './block-device.js';
import { checkRange, type Device } from './device.js';
import type { DiffArea } from './diff-area.js';
import type { DiffStorage } from './diff-storage.js';

const ZERO_PIECE = 1024 * 1024;

/**
 * blksnap's snapimage. Reads come from the kept originals and the device; writes land on the kept
 * copy in the difference storage (never on the device) and mark both CBT maps of the device, so
 * the next backup copies what was changed in the image too.
 */
export class SnapImage implements BlockDevice {
  readonly name: string;
  readonly size: number;
  readonly isReadOnly = false;
  readonly canTrim = false;
  readonly device: Device;
  #area: DiffArea;
  #diff: DiffStorage;
  #ops = new InFlight();
  #isClosing = false;
  #closeEmitter = new Emitter<void>();
  readonly onClose = this.#closeEmitter.event;

  constructor(name: string, device: Device, area: DiffArea, diff: DiffStorage) {
    this.name = name;
    this.device = device;
    this.size = area.chunks.capacity;
    this.#area = area;
    this.#diff = diff;
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    this.#begin('image read', offset, into.length, 'EINVAL');
    return this.#area.readImage(offset, into).finally(() => this.#end());
  }

  readNow(offset: number, into: Uint8Array): boolean {
    this.#begin('image read', offset, into.length, 'EINVAL');
    try {
      return this.#area.readImageNow(offset, into);
    } finally {
      this.#end();
    }
  }

  write(offset: number, data: Uint8Array, _flags: IoFlags): Promise<void> {
    this.#begin('image write', offset, data.length, 'ENOSPC');
    try {
      this.device.tracker.cbt.markBoth(offset, data.length);
    } catch (e) {
      this.#end();
      throw e;
    }
    return this.#area.writeImage(offset, data).finally(() => this.#end());
  }

  async zero(offset: number, length: number, flags: IoFlags): Promise<void> {
    const zeroes = new Uint8Array(Math.min(length, ZERO_PIECE));
    for (let done = 0; done < length; done += zeroes.length) {
      await this.write(offset + done, zeroes.subarray(0, Math.min(zeroes.length, length - done)), flags);
    }
  }

  /** Deallocation is advisory: an image keeps its data. */
  async trim(offset: number, length: number): Promise<void> {
    this.#begin('image trim', offset, length, 'ENOSPC');
    this.#end();
  }

  flush(): Promise<void> {
    this.#begin('image flush', 0, 0, 'EINVAL');
    return this.#diff.flush().finally(() => this.#end());
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#begin('image block status', offset, length, 'EINVAL');
    this.#end();
    return [{ offset, length, isHole: false, isZero: false }];
  }

  async cache(offset: number, length: number): Promise<void> {
    this.#begin('image cache', offset, length, 'EINVAL');
    this.#end();
  }

  /** Refuses new I/O, waits for what is in flight (the store's descriptor must outlive it), tells front ends. */
  async close(): Promise<void> {
    if (this.#isClosing) return;
    this.#isClosing = true;
    await this.#ops.idle();
    this.#closeEmitter.fire();
  }

  #begin(what: string, offset: number, length: number, pastEnd: 'EINVAL' | 'ENOSPC'): void {
    if (this.#isClosing) throw new BlkError('ESHUTDOWN', `${what}: the snapshot of ${this.device.name} is being destroyed`);
    checkRange(what, offset, length, this.size, pastEnd);
    this.#ops.enter();
  }

  #end(): void {
    this.#ops.leave();
  }
}
