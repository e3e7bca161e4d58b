// Owns refusing paths that lie on the daemon's own devices: its stores, its kernel block devices, its FUSE files.
import * as path from 'node:path';
import { BlkError, toBlkError } from '../errors.js';
import { blockDeviceParent, deviceNumberText, identifyPath, type PathIdentity } from '../os/block-identity.js';

/** What the daemon serves now, as device numbers and inodes. */
export interface OwnDevices {
  /** Stores of attached devices: regular files by (dev, ino), block devices by "major:minor". */
  stores(): Array<{ device: string; dev: number; ino: number; blockDevice: string | null }>;
  /** Kernel block devices of exports: the loop device's "major:minor" and its FUSE mount's filesystem. */
  loopDevices(): Array<{ exportName: string; loop: string; blockDevice: string; fuseFilesystem: string | null }>;
}

const MAXIMUM_DEPTH = 8;

/** The error for a path that is an attached device's store itself. */
export type SameStore = (device: string, what: string) => BlkError;

/** An attached device's store given again: in use. */
export const storeInUse: SameStore = (device, what) => new BlkError('EBUSY', `${what} is the store of attached device ${device}, in use`);

/**
 * A path a client gives (a store to attach, a difference storage, a backup target) may lie on a
 * device this daemon serves: written through the daemon it would track or copy itself, and
 * written beside it (a loop device over a store) it would bypass tracking; any synchronous call
 * on it can deadlock the event loop that serves its blocks. Such paths are refused with EINVAL.
 */
export class OwnPaths {
  #own: OwnDevices;

  constructor(own: OwnDevices) {
    this.#own = own;
  }

  /**
   * Throws EINVAL naming the device when `p` is or lies on one of ours, or what `sameStore` makes of
   * it when it is an attached device's store itself (EBUSY: in use); ENOENT etc. when it cannot be
   * looked at.
   */
  async refuseOwn(p: string, purpose: string, sameStore: SameStore = storeInUse): Promise<PathIdentity> {
    let identity: PathIdentity;
    try {
      identity = await identifyPath(p);
    } catch (e) {
      const err = toBlkError(e);
      throw new BlkError(err.code, `${purpose} ${p}: ${err.message}`, { path: p });
    }
    for (const s of this.#own.stores()) {
      if (identity.kind === 'block' ? identity.blockDevice === s.blockDevice : s.blockDevice === null && identity.dev === s.dev && identity.ino === s.ino) {
        throw sameStore(s.device, `${purpose} ${p}`);
      }
    }
    const why = await this.#whyOwn(identity, 0);
    if (why) throw new BlkError('EINVAL', `${purpose} ${p} ${why}; a path on a device of this daemon is refused`, { path: p });
    return identity;
  }

  /**
   * What a path is to this daemon, for a client that would write it directly (a restore): an
   * attached device's store itself, by identity (so a symlink, a hard link, a bind mount or a
   * /dev/disk/by-* name is found too); something that lies on or is one of its devices; something
   * an attached store lies on (a disk, a partition, a loop device's backing file); or none of these.
   */
  async classify(p: string): Promise<{ kind: 'store'; device: string } | { kind: 'refused'; why: string } | { kind: 'none'; identity: PathIdentity | null }> {
    let identity: PathIdentity;
    try {
      identity = await identifyPath(p);
    } catch (e) {
      if (toBlkError(e).code === 'ENOENT') return { kind: 'none', identity: null };
      throw e;
    }
    for (const s of this.#own.stores()) {
      if (identity.kind === 'block' ? identity.blockDevice === s.blockDevice : s.blockDevice === null && identity.dev === s.dev && identity.ino === s.ino) return { kind: 'store', device: s.device };
    }
    const why = await this.#whyOwn(identity, 0);
    if (why) return { kind: 'refused', why: `${p} ${why}` };
    for (const s of this.#own.stores()) {
      const under = await this.#storeLiesOn(s, identity);
      if (under) return { kind: 'refused', why: `the store of attached device ${s.device} lies on ${p} (${under})` };
    }
    return { kind: 'none', identity };
  }

  /** How store `s` depends on `target` (a block device it sits on, a loop device's backing file), or null. */
  async #storeLiesOn(s: { dev: number; blockDevice: string | null }, target: PathIdentity): Promise<string | null> {
    // A file store sits on its filesystem's device; a block store is its own first link.
    let number: string | null = s.blockDevice ?? deviceNumberText(s.dev);
    for (let depth = 0; number !== null && depth <= MAXIMUM_DEPTH; depth++) {
      if (target.kind === 'block' && target.blockDevice === number) return `block device ${number}`;
      const parent = await blockDeviceParent(number);
      if (parent === null) return null;
      if ('wholeDisk' in parent) {
        number = parent.wholeDisk;
        continue;
      }
      let backing: PathIdentity;
      try {
        backing = await identifyPath(parent.backingFile);
      } catch {
        return null;
      }
      if (target.kind === 'file' && backing.dev === target.dev && backing.ino === target.ino) return `the backing file of loop device ${number}`;
      number = backing.kind === 'block' ? backing.blockDevice : backing.filesystem;
    }
    return null;
  }

  async #whyOwn(id: PathIdentity, depth: number): Promise<string | null> {
    if (depth > MAXIMUM_DEPTH) return null;
    for (const s of this.#own.stores()) {
      if (id.kind === 'block' ? id.blockDevice === s.blockDevice : s.blockDevice === null && id.dev === s.dev && id.ino === s.ino) {
        return `is the store of device ${s.device}`;
      }
    }
    if (id.kind === 'block' && id.blockDevice !== null) {
      const why = await this.#whyOwnBlockDevice(id.blockDevice, depth);
      if (why) return `is ${why}`;
    }
    const why = await this.#whyOwnBlockDevice(id.filesystem, depth);
    return why ? `lies on a filesystem of ${why}` : null;
  }

  /** Why a block device ("major:minor") is ours: one of our loop devices, a loop or partition over something of ours. */
  async #whyOwnBlockDevice(number: string, depth: number): Promise<string | null> {
    for (const b of this.#own.loopDevices()) {
      if (b.blockDevice === number) return `${b.loop}, the block device of export ${b.exportName}`;
      if (b.fuseFilesystem === number) return `the FUSE mount of export ${b.exportName}`;
    }
    const parent = await blockDeviceParent(number);
    if (parent === null) return null;
    if ('wholeDisk' in parent) {
      const why = await this.#whyOwnBlockDevice(parent.wholeDisk, depth + 1);
      return why ? `a partition of ${why}` : null;
    }
    let backing: PathIdentity;
    try {
      backing = await identifyPath(parent.backingFile);
    } catch {
      return null;
    }
    const why = await this.#whyOwn(backing, depth + 1);
    return why ? `a loop device over ${path.basename(parent.backingFile)}, which ${why}` : null;
  }
}

