// Owns the set of attached devices and the exports the front ends can serve, by name and by path.
import * as path from 'node:path';
import * as fs from 'node:fs';
import type { Storage } from '../backing/storage.js';
import { BlkError } from '../errors.js';
import type { BlockDevice } from './block-device.js';
import { Device } from './device.js';

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;

/** An export name from a store's path: its base name, e.g. /dev/loop3 -> loop3, /srv/disk.img -> disk.img. */
export function defaultDeviceName(storagePath: string): string {
  return path.basename(storagePath).replace(/[^A-Za-z0-9._+-]/g, '_') || 'device';
}

function canonicalPath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

export class Registry {
  #devices = new Map<string, Device>();
  #extraExports = new Map<string, BlockDevice>();

  /** Attaches a device over an opened store; the store is closed again if the name is taken. */
  async attach(storage: Storage, options: { name?: string; tracking?: boolean } = {}): Promise<Device> {
    const name = options.name ?? defaultDeviceName(storage.path);
    try {
      if (!NAME_PATTERN.test(name)) {
        throw new BlkError('EINVAL', `invalid device name '${name}': use 1-128 letters, digits, '.', '_', '+' or '-'`);
      }
      if (this.#devices.has(name) || this.#extraExports.has(name)) {
        throw new BlkError('EEXIST', `a device or export named '${name}' already exists; pass another name`);
      }
    } catch (e) {
      await storage.close();
      throw e;
    }
    const device = new Device(name, storage, options.tracking === undefined ? {} : { tracking: options.tracking });
    this.#devices.set(name, device);
    return device;
  }

  async detach(device: Device): Promise<void> {
    this.#devices.delete(device.name);
    await device.close();
  }

  /** Finds a device by its name or by the path it was attached from; ENOENT otherwise. */
  resolve(nameOrPath: string): Device {
    const byName = this.#devices.get(nameOrPath);
    if (byName) return byName;
    const wanted = canonicalPath(nameOrPath);
    for (const device of this.#devices.values()) {
      if (device.path === nameOrPath || canonicalPath(device.path) === wanted) return device;
    }
    throw new BlkError('ENOENT', `no attached device named or at '${nameOrPath}'`, { device: nameOrPath });
  }

  devices(): Device[] {
    return [...this.#devices.values()];
  }

  /** Registers a further export (a snapshot image) under a unique name. */
  addExport(exported: BlockDevice): void {
    if (this.#devices.has(exported.name) || this.#extraExports.has(exported.name)) {
      throw new BlkError('EEXIST', `an export named '${exported.name}' already exists`);
    }
    this.#extraExports.set(exported.name, exported);
  }

  removeExport(name: string): void {
    this.#extraExports.delete(name);
  }

  /** What an NBD client gets for an export name; "" means the only export, when there is one. */
  lookupExport(name: string): BlockDevice | undefined {
    const found = this.#devices.get(name) ?? this.#extraExports.get(name);
    if (found || name !== '') return found;
    const all = this.exports();
    return all.length === 1 ? all[0] : undefined;
  }

  exports(): BlockDevice[] {
    return [...this.#devices.values(), ...this.#extraExports.values()];
  }
}
