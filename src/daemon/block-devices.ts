// Owns the daemon's kernel block devices: which export has which /dev/loopN, saved so a crashed daemon's are cleaned.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { exposeLoopDevice, mountPointsOf, releaseLoopDevice, type LoopRecord } from '../frontends/fuse-loop/loop-device.js';
import type { Log } from './log.js';

export class BlockDevices {
  #records = new Map<string, LoopRecord>();
  #recordFile: string;
  #fuseDir: string;
  #nbdSocket: string;
  #log: Log;

  constructor(stateDir: string, nbdSocket: string, log: Log) {
    this.#recordFile = path.join(stateDir, 'block-devices.json');
    this.#fuseDir = path.join(stateDir, 'fuse');
    this.#nbdSocket = nbdSocket;
    this.#log = log;
  }

  /** The block device of an export, if it has one. */
  get(exportName: string): string | undefined {
    return this.#records.get(exportName)?.loop;
  }

  /** Filesystems mounted from an export's block device. */
  mountPoints(exportName: string): string[] {
    const loop = this.get(exportName);
    return loop ? mountPointsOf(loop) : [];
  }

  async expose(exportName: string): Promise<string> {
    const existing = this.get(exportName);
    if (existing) return existing;
    const record = await exposeLoopDevice(exportName, this.#nbdSocket, path.join(this.#fuseDir, exportName));
    this.#records.set(exportName, record);
    this.#save();
    this.#log(`${exportName} is block device ${record.loop}`);
    return record.loop;
  }

  async release(exportName: string): Promise<void> {
    const record = this.#records.get(exportName);
    if (!record) return;
    await releaseLoopDevice(record);
    this.#records.delete(exportName);
    this.#save();
    this.#log(`released block device ${record.loop} of ${exportName}`);
  }

  async releaseAll(): Promise<void> {
    for (const name of [...this.#records.keys()]) await this.release(name);
  }

  /** Releases the loop devices, FUSE mounts and nbdfuse processes a crashed daemon left behind. */
  async cleanLeftovers(): Promise<void> {
    let leftovers: LoopRecord[] = [];
    try {
      leftovers = JSON.parse(fs.readFileSync(this.#recordFile, 'utf8')) as LoopRecord[];
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
    fs.writeFileSync(this.#recordFile, JSON.stringify([...this.#records.values()], null, 1));
  }
}
