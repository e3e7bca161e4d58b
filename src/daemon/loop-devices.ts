// Owns the daemon's kernel block devices: which export has which /dev/loopN, saved so a crashed daemon's are cleaned.
import * as fs from 'node:fs';
import { readOwnFile, writeOwnFile } from '../os/private-dir.js';
import * as path from 'node:path';
import type { BlockDevice } from '../core/block-device.js';
import { BlkError } from '../errors.js';
import { FuseExport } from '../frontends/fuse/fuse-export.js';
import { bindLoop, deviceNumber, exposeThroughNbdfuse, mountDeviceNumber, mountPointsOf, releaseLoopDevice, unbindLoop, type LoopRecord } from '../os/loop-device.js';
import type { Log } from './log.js';

/** How a device becomes a FUSE file for its loop device: the daemon's own FUSE server, or nbdfuse over NBD. */
export type LoopRoute = 'fuse' | 'nbdfuse';

export interface LoopDevicesOptions {
  stateDir: string;
  nbdSocket: string;
  route: LoopRoute;
  /** The in-daemon FUSE route takes requests through io_uring where the kernel offers it. */
  fuseIoUring: boolean;
  /** The exports the in-daemon FUSE route serves. */
  lookupExport: (name: string) => BlockDevice | undefined;
  log: Log;
}

export class LoopDevices {
  #records = new Map<string, LoopRecord>();
  /** Device numbers of each export's loop device and FUSE mount, to recognise paths on them. */
  #numbers = new Map<string, { blockDevice: string; fuseFilesystem: string | null }>();
  #fuseExports = new Map<string, FuseExport>();
  #recordFile: string;
  #fuseDir: string;
  #options: LoopDevicesOptions;
  #log: Log;

  constructor(options: LoopDevicesOptions) {
    this.#options = options;
    this.#recordFile = path.join(options.stateDir, 'block-devices.json');
    this.#fuseDir = path.join(options.stateDir, 'fuse');
    this.#log = options.log;
  }

  /** The block device of an export, if it has one. */
  get(exportName: string): string | undefined {
    return this.#records.get(exportName)?.loop;
  }

  /** Every export's kernel block device, with the device numbers of the loop device and of its FUSE mount. */
  kernelDevices(): Array<{ exportName: string; loop: string; blockDevice: string; fuseFilesystem: string | null }> {
    return [...this.#records.values()].flatMap((r) => {
      const numbers = this.#numbers.get(r.exportName);
      return numbers ? [{ exportName: r.exportName, loop: r.loop, ...numbers }] : [];
    });
  }

  /** Filesystems mounted from an export's block device. */
  mountPoints(exportName: string): string[] {
    const loop = this.get(exportName);
    return loop ? mountPointsOf(loop) : [];
  }

  async expose(exportName: string): Promise<string> {
    const existing = this.get(exportName);
    if (existing) return existing;
    const mountpoint = path.join(this.#fuseDir, exportName);
    const record = this.#options.route === 'nbdfuse' ? await exposeThroughNbdfuse(exportName, this.#options.nbdSocket, mountpoint, this.#options.lookupExport(exportName)?.isReadOnly ?? false) : await this.#exposeThroughFuse(exportName, mountpoint);
    this.#records.set(exportName, record);
    this.#numbers.set(exportName, { blockDevice: deviceNumber(record.loop), fuseFilesystem: mountDeviceNumber(record.mountpoint) });
    this.#save();
    this.#log(`${exportName} is block device ${record.loop}`);
    return record.loop;
  }

  async release(exportName: string): Promise<void> {
    const record = this.#records.get(exportName);
    if (!record) return;
    const fuse = this.#fuseExports.get(exportName);
    if (fuse) {
      await unbindLoop(record);
      await fuse.unmount();
      this.#fuseExports.delete(exportName);
    } else {
      await releaseLoopDevice(record);
    }
    this.#records.delete(exportName);
    this.#numbers.delete(exportName);
    this.#save();
    this.#log(`released block device ${record.loop} of ${exportName}`);
  }

  async releaseAll(): Promise<void> {
    for (const name of [...this.#records.keys()]) await this.release(name);
  }

  async #exposeThroughFuse(exportName: string, mountpoint: string): Promise<LoopRecord> {
    const device = this.#options.lookupExport(exportName);
    if (!device) throw new BlkError('ENOENT', `no export named ${exportName}`);
    const fuse = FuseExport.mount(device, mountpoint, { log: this.#log, ioUring: this.#options.fuseIoUring });
    try {
      const loop = await bindLoop(fuse.file, device.isReadOnly);
      this.#fuseExports.set(exportName, fuse);
      return { exportName, mountpoint, loop, pid: process.pid };
    } catch (e) {
      await fuse.unmount();
      throw e;
    }
  }

  /** Releases the loop devices, FUSE mounts and nbdfuse processes a crashed daemon left behind. */
  async cleanLeftovers(): Promise<void> {
    let leftovers: LoopRecord[] = [];
    try {
      leftovers = JSON.parse(readOwnFile(this.#recordFile)) as LoopRecord[];
    } catch {
      return;
    }
    for (const record of leftovers) {
      this.#log(`cleaning block device ${record.loop} of ${record.exportName} left by an earlier daemon`);
      await releaseLoopDevice(record).catch((e: unknown) => this.#log(`cannot clean ${record.loop}: ${String(e)}`));
    }
    this.#save();
  }

  #save(): void {
    fs.mkdirSync(path.dirname(this.#recordFile), { recursive: true });
    writeOwnFile(this.#recordFile, JSON.stringify([...this.#records.values()], null, 1));
  }
}
