// Owns a snapshot's life: its devices, difference storage, atomic take, images, events, destroy.
import { randomUUID } from 'node:crypto';
import { BlkError } from '../errors.js';
import { snapshot as params } from '../params.js';
import type { Device } from './device.js';
import { DiffArea, type SnapshotHealth } from './diff-area.js';
import { DiffStorage } from './diff-storage.js';
import { EventQueue, type SnapshotEvent } from './event-queue.js';
import { holdAll } from './hold.js';
import { SnapImage } from './snap-image.js';

export interface SnapshotOptions {
  /** File, directory or block device for the difference storage. */
  diffStorage: string;
  /** Largest size of the difference storage, bytes. */
  limit: number;
  /** Growth step of a file difference storage (default 1 GiB). */
  diffStorageMinimum?: number;
  /** Share of the limit past which a low_space event comes (default params.snapshot.lowSpaceShare). */
  lowSpaceShare?: number;
  /** Smallest chunk shift (default 18: 256 KiB chunks). */
  chunkMinimumShift?: number;
  /** Chunks copied at once per device, at most (default 256). */
  chunkMaximumInQueue?: number;
  /** Copy-on-write copies bypass the page cache (O_DIRECT) where the difference storage's filesystem allows. */
  isCowCopyDirect?: boolean;
  /** A regular file that holds data may be overwritten (else EEXIST). */
  force?: boolean;
}

/** Where images go: the daemon registers them as exports. */
export interface ImagePublisher {
  publish(image: SnapImage): void;
  unpublish(image: SnapImage): void;
}

export type SnapshotPhase = 'created' | 'taking' | 'taken' | 'destroyed';

/**
 * blksnap's snapshot. Created with devices and a difference storage; `take()` makes the
 * point in time atomically across all its devices; images then show the devices as they were.
 * A failure to keep an original corrupts the snapshot (first error wins, `corrupted` event) and
 * never touches a device's own data.
 */
export class Snapshot implements SnapshotHealth {
  readonly id = randomUUID();
  readonly options: Readonly<SnapshotOptions>;
  readonly events = new EventQueue(params.maximumQueuedEvents);
  #devices: Device[] = [];
  #phase: SnapshotPhase = 'created';
  #error: BlkError | null = null;
  #diff: DiffStorage | null = null;
  #areas = new Map<Device, DiffArea>();
  #images = new Map<Device, SnapImage>();
  #publisher: ImagePublisher;

  constructor(options: SnapshotOptions, publisher: ImagePublisher) {
    this.options = options;
    this.#publisher = publisher;
  }

  get phase(): SnapshotPhase {
    return this.#phase;
  }

  get error(): BlkError | null {
    return this.#error;
  }

  get devices(): readonly Device[] {
    return this.#devices;
  }

  get diffStorage(): DiffStorage | null {
    return this.#diff;
  }

  image(device: Device): SnapImage | undefined {
    return this.#images.get(device);
  }

  /** Adds a device before the take; a device belongs to at most one snapshot. */
  add(device: Device): void {
    if (this.#phase !== 'created') throw new BlkError('EALREADY', `snapshot ${this.id} is already taken; devices can be added only before the take`);
    if (device.isReadOnly) throw new BlkError('EINVAL', `device ${device.name} is attached read-only; a snapshot needs its writes`);
    device.tracker.joinSnapshot(this.id, device.name);
    this.#devices.push(device);
  }

  /** Opens the difference storage (at create, so a bad store fails early). */
  async open(): Promise<void> {
    this.#diff = await DiffStorage.open(this.options.diffStorage, {
      limit: this.options.limit,
      minimum: this.options.diffStorageMinimum ?? params.diffStorageMinimum,
      devices: this.#devices.map((d) => d.storage),
      isCopyDirect: this.options.isCowCopyDirect ?? false,
      force: this.options.force ?? false,
      ...(this.options.lowSpaceShare === undefined ? {} : { lowSpaceShare: this.options.lowSpaceShare }),
    });
    this.#diff.onLowSpace((data) => this.events.push({ code: 'low_space', time: Date.now(), data }));
    this.#diff.onNoSpace(({ requestedSectors }) => this.events.push({ code: 'no_space', time: Date.now(), data: { requestedSectors } }));
  }

  /**
   * The take: hold new writes on every device and wait for those in flight, flush, switch the
   * CBT maps, start copy-on-write, create the images, then let writes go on. No write of any
   * device is half in, half out, and all devices share one point in time. `beforeHold` runs once
   * the chunk maps are made, just before writes are held (the daemon freezes filesystems there, so
   * that making the maps is not part of their frozen time).
   */
  async take(imageName: (device: Device) => string, beforeHold?: () => Promise<void>): Promise<void> {
    if (this.#phase === 'destroyed') throw new BlkError('ESRCH', `snapshot ${this.id} is destroyed`);
    if (this.#phase !== 'created') throw new BlkError('EALREADY', `snapshot ${this.id} is already taken`);
    if (this.#devices.length === 0) throw new BlkError('EINVAL', `snapshot ${this.id} has no devices`);
    const diff = this.#diff;
    if (!diff) throw new BlkError('EINVAL', `snapshot ${this.id} has no difference storage`);
    this.#phase = 'taking';
    const devices = this.#devices;
    const published: SnapImage[] = [];
    const inQueue = this.options.chunkMaximumInQueue ?? params.chunkMaximumInQueue;
    const newArea = (d: Device): DiffArea =>
      new DiffArea(d.name, d.storage, diff, this, {
        maximumInQueue: inQueue,
        ...(this.options.chunkMinimumShift === undefined ? {} : { chunkMinimumShift: this.options.chunkMinimumShift }),
      });
    let release: (() => void) | null = null;
    try {
      // The chunk maps before writes are held: a 1 TiB device's are 20 MiB of shared memory, and
      // making four of them held writes back for up to 48 ms of a take.
      const areas = devices.map(newArea);
      await beforeHold?.();
      release = await holdAll(devices.map((d) => d.tracker));
      await Promise.all(devices.map((d) => d.storage.flush()));
      // All that can fail comes before the CBT switch, so a failed take leaves no trace.
      const capacities = devices.map((d) => d.storage.probeSize());
      for (const [i, d] of devices.entries()) {
        // A store whose size changed since: its map made again, for the size at the take.
        const area = (areas[i] as DiffArea).chunks.capacity === d.storage.size ? (areas[i] as DiffArea) : newArea(d);
        const image = new SnapImage(imageName(d), d, area, diff);
        this.#publisher.publish(image);
        published.push(image);
        this.#areas.set(d, area);
        this.#images.set(d, image);
      }
      devices.forEach((d, i) => {
        d.tracker.switchCbt(capacities[i] as number);
        d.tracker.diffArea = this.#areas.get(d) as DiffArea;
      });
      this.#phase = 'taken';
    } catch (e) {
      for (const image of published) this.#publisher.unpublish(image);
      this.#areas.clear();
      this.#images.clear();
      this.#phase = 'created';
      throw e;
    } finally {
      release?.();
    }
  }

  corrupt(device: string, error: BlkError): void {
    if (this.#error || this.#phase === 'destroyed') return;
    this.#error = error;
    for (const area of this.#areas.values()) area.closeReadGate();
    this.events.push({ code: 'corrupted', time: Date.now(), data: { device, errorCode: -error.errno } });
  }

  waitEvent(timeoutMs: number): Promise<SnapshotEvent | null> {
    return this.events.wait(timeoutMs);
  }

  /**
   * Stops copy-on-write, closes the images (their I/O in flight finishes or fails first), waits for
   * copies in flight, releases the difference storage and the devices. Tracking goes on.
   */
  async destroy(): Promise<void> {
    if (this.#phase === 'destroyed') return;
    if (this.#phase === 'taking') throw new BlkError('EBUSY', `snapshot ${this.id} is being taken`);
    this.#phase = 'destroyed';
    this.events.close(new BlkError('ESRCH', `snapshot ${this.id} was destroyed`));
    for (const d of this.#devices) {
      if (d.tracker.diffArea === this.#areas.get(d)) d.tracker.diffArea = null;
    }
    for (const area of this.#areas.values()) area.stop();
    await Promise.all([...this.#images.values()].map(async (image) => {
      this.#publisher.unpublish(image);
      await image.close();
    }));
    await Promise.all([...this.#areas.values()].map((a) => a.drain()));
    await this.#diff?.close();
    for (const d of this.#devices) {
      d.tracker.leaveSnapshot(this.id);
    }
  }
}
