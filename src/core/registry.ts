// Owns the set of attached devices and the exports the front ends can serve, by name and by path.
import * as path from 'node:path';
import * as fs from 'node:fs';
import type { Storage } from '../backing/storage.js';
import { BlkError } from '../errors.js';
import type { BlockDevice } from './block-device.js';
import { Device } from './device.js';
import type { TrackerOptions } from './tracker.js';
import type { SnapImage } from './snap-image.js';
import { Snapshot, type ImagePublisher, type SnapshotOptions } from './snapshot.js';

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;

/** A snapshot image is exported as its device's name with this suffix, which device names may not end with. */
export const IMAGE_SUFFIX = '-image';

/** The export name of a device's snapshot image. */
export function imageName(deviceName: string): string {
  return deviceName + IMAGE_SUFFIX;
}

/**
 * An export name from a store's path: its base name, e.g. /dev/loop3 -> loop3, /srv/disk.img -> disk.img
 * (/srv/vm-image -> vm_image: the image suffix is reserved).
 */
export function defaultDeviceName(storagePath: string): string {
  const name = path.basename(storagePath).replace(/[^A-Za-z0-9._+-]/g, '_') || 'device';
  return name.endsWith(IMAGE_SUFFIX) ? `${name.slice(0, -IMAGE_SUFFIX.length)}_${IMAGE_SUFFIX.slice(1)}` : name;
}

/** The path with links resolved, in the thread pool (it may lie where only this event loop serves the blocks). */
async function canonicalPath(p: string): Promise<string> {
  try {
    return await fs.promises.realpath(p);
  } catch {
    return path.resolve(p);
  }
}

export class Registry implements ImagePublisher {
  #devices = new Map<string, Device>();
  /** Snapshot images published as exports, by export name. */
  #images = new Map<string, BlockDevice>();
  #snapshots = new Map<string, Snapshot>();

  /** EINVAL for a name a device may not have, EEXIST for one in use. */
  checkNewName(name: string): void {
    if (!NAME_PATTERN.test(name)) {
      throw new BlkError('EINVAL', `invalid device name '${name}': use 1-128 letters, digits, '.', '_', '+' or '-'`);
    }
    if (name.endsWith(IMAGE_SUFFIX)) {
      throw new BlkError('EINVAL', `invalid device name '${name}': names ending in '${IMAGE_SUFFIX}' are kept for snapshot images`);
    }
    if (this.#devices.has(name) || this.#images.has(name)) {
      throw new BlkError('EEXIST', `a device or export named '${name}' already exists; pass another name`);
    }
  }

  /** Attaches a device over an opened store; the store is closed again if the name is taken. */
  async attach(storage: Storage, options: { name?: string } & TrackerOptions = {}): Promise<Device> {
    const name = options.name ?? defaultDeviceName(storage.path);
    try {
      this.checkNewName(name);
    } catch (e) {
      await storage.close();
      throw e;
    }
    const { name: _name, ...tracker } = options;
    const device = new Device(name, storage, tracker);
    this.#devices.set(name, device);
    return device;
  }

  /** EBUSY while the device belongs to a snapshot. */
  checkDetachable(device: Device): void {
    if (device.tracker.snapshotId !== null) {
      throw new BlkError('EBUSY', `device ${device.name} belongs to snapshot ${device.tracker.snapshotId}; destroy it first`);
    }
  }

  async detach(device: Device): Promise<void> {
    this.checkDetachable(device);
    this.#devices.delete(device.name);
    await device.close();
  }

  /** Finds a device by its name or by the path it was attached from (links resolved); ENOENT otherwise. */
  async find(nameOrPath: string): Promise<Device> {
    const byName = this.#devices.get(nameOrPath);
    if (byName) return byName;
    const absolute = path.resolve(nameOrPath);
    for (const device of this.#devices.values()) {
      if (device.path === nameOrPath || path.resolve(device.path) === absolute) return device;
    }
    if (nameOrPath.includes('/')) {
      const wanted = await canonicalPath(nameOrPath);
      for (const device of this.#devices.values()) {
        if ((await canonicalPath(device.path)) === wanted) return device;
      }
      // Another name for the same store: a hard link, a bind mount, a /dev/disk/by-* name.
      const st = await fs.promises.stat(nameOrPath).catch(() => null);
      for (const device of st ? this.#devices.values() : []) {
        const id = device.storage.identity();
        if (id && (id.rdev !== 0 ? st?.isBlockDevice() && st.rdev === id.rdev : st?.isFile() && st.dev === id.dev && st.ino === id.ino)) return device;
      }
    }
    throw new BlkError('ENOENT', `no attached device named or at '${nameOrPath}'`, { device: nameOrPath });
  }

  devices(): Device[] {
    return [...this.#devices.values()];
  }

  /** Makes a snapshot image an export under its own name. */
  publish(image: SnapImage): void {
    if (this.#devices.has(image.name) || this.#images.has(image.name)) {
      throw new BlkError('EEXIST', `an export named '${image.name}' already exists`);
    }
    this.#images.set(image.name, image);
  }

  unpublish(image: SnapImage): void {
    if (this.#images.get(image.name) === image) this.#images.delete(image.name);
  }

  /** Creates a snapshot of devices over a difference storage (opened now, so a bad one fails here). */
  async createSnapshot(devices: readonly Device[], options: SnapshotOptions): Promise<Snapshot> {
    const snapshot = new Snapshot(options, this);
    const added: Device[] = [];
    try {
      for (const d of devices) {
        snapshot.add(d);
        added.push(d);
      }
      await snapshot.open();
    } catch (e) {
      for (const d of added) d.tracker.leaveSnapshot(snapshot.id);
      throw e;
    }
    this.#snapshots.set(snapshot.id, snapshot);
    return snapshot;
  }

  snapshot(id: string): Snapshot {
    const s = this.#snapshots.get(id);
    if (!s) throw new BlkError('ESRCH', `no snapshot with id '${id}'`, { id });
    return s;
  }

  snapshots(): Snapshot[] {
    return [...this.#snapshots.values()];
  }

  async destroySnapshot(snapshot: Snapshot): Promise<void> {
    await snapshot.destroy();
    this.#snapshots.delete(snapshot.id);
  }

  /** What an NBD client gets for an export name; "" means the only export, when there is one. */
  lookupExport(name: string): BlockDevice | undefined {
    const found = this.#devices.get(name) ?? this.#images.get(name);
    if (found || name !== '') return found;
    const all = this.exports();
    return all.length === 1 ? all[0] : undefined;
  }

  exports(): BlockDevice[] {
    return [...this.#devices.values(), ...this.#images.values()];
  }
}
