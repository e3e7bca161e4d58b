// Owns what the daemon keeps in --state-dir so devices and their change tracking survive a restart:
// the attached devices, and each tracker as saved at a clean stop (SPEC §8).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CbtMap } from '../core/cbt-map.js';
import type { Device } from '../core/device.js';
import { readStateFile, writeStateFile } from '../os/state-file.js';

/** An attached device as the next start attaches it again. */
export interface AttachedRecord {
  path: string;
  name: string;
  readOnly: boolean;
  tracking: boolean;
  loop: boolean;
}

const DEVICES_KIND = 1;
const TRACKER_KIND = 2;
const VERSION = 1;

/** What a tracker's state file says besides the map: whether it was saved at a clean stop, and the store as it was then. */
interface TrackerHeader {
  clean: boolean;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  isBlockDevice: boolean;
}

export type RestoredTracker = { map: CbtMap } | { reason: string };

export class DeviceState {
  #dir: string;

  constructor(stateDir: string) {
    this.#dir = stateDir;
  }

  get #devicesFile(): string {
    return path.join(this.#dir, 'devices.state');
  }

  #trackerFile(name: string): string {
    return path.join(this.#dir, 'cbt', `${name}.state`);
  }

  /** The devices to attach again; none (with the reason) when the file is missing or damaged. */
  async loadAttached(): Promise<{ records: AttachedRecord[]; reason?: string }> {
    const r = await readStateFile(this.#devicesFile, DEVICES_KIND, VERSION);
    if (!r.ok) return { records: [], reason: r.reason };
    try {
      return { records: JSON.parse(r.payload.toString('utf8')) as AttachedRecord[] };
    } catch {
      return { records: [], reason: `${this.#devicesFile} does not hold a device list` };
    }
  }

  async saveAttached(records: readonly AttachedRecord[]): Promise<void> {
    await fs.promises.mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await writeStateFile(this.#devicesFile, DEVICES_KIND, VERSION, Buffer.from(JSON.stringify(records)));
  }

  /**
   * The tracker saved at the last clean stop, when it can be trusted: the file is whole, the stop
   * was clean (a crash leaves the running mark), and the store is as it was then (size; a regular
   * file's mtime and ctime). Otherwise why not, for cbtinfo.
   */
  async loadTracker(name: string, storePath: string): Promise<RestoredTracker> {
    const r = await readStateFile(this.#trackerFile(name), TRACKER_KIND, VERSION);
    if (!r.ok) return { reason: r.reason.includes('ENOENT') ? 'no saved tracker' : `saved tracker refused: ${r.reason}` };
    let header: TrackerHeader;
    let headerLength: number;
    try {
      headerLength = r.payload.readUInt32LE(0);
      header = JSON.parse(r.payload.toString('utf8', 4, 4 + headerLength)) as TrackerHeader;
    } catch {
      return { reason: 'saved tracker refused: its header is not JSON' };
    }
    if (!header.clean) return { reason: 'the daemon did not stop cleanly: changes since the last save may be missing' };
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(storePath);
    } catch (e) {
      return { reason: `cannot look at the store: ${(e as NodeJS.ErrnoException).code ?? String(e)}` };
    }
    const size = header.isBlockDevice ? header.size : st.size;
    if (size !== header.size) return { reason: `the store changed size while not attached (${header.size} → ${size} bytes)` };
    if (!header.isBlockDevice && (st.mtimeMs !== header.mtimeMs || st.ctimeMs !== header.ctimeMs)) {
      return { reason: 'the store was modified while not attached' };
    }
    try {
      return { map: CbtMap.deserialize(r.payload.subarray(4 + headerLength)) };
    } catch (e) {
      return { reason: `saved tracker refused: ${(e as Error).message}` };
    }
  }

  /**
   * Saves a device's tracker. `clean` only at a clean stop, after the last write; a start saves
   * it not clean at once, so a crash from then on is known for one at the next start.
   */
  async saveTracker(device: Device, clean: boolean): Promise<void> {
    const st = await fs.promises.stat(device.path);
    const header: TrackerHeader = { clean, size: device.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, isBlockDevice: st.isBlockDevice() };
    const json = Buffer.from(JSON.stringify(header));
    const length = Buffer.alloc(4);
    length.writeUInt32LE(json.length);
    await fs.promises.mkdir(path.dirname(this.#trackerFile(device.name)), { recursive: true, mode: 0o700 });
    await writeStateFile(this.#trackerFile(device.name), TRACKER_KIND, VERSION, Buffer.concat([length, json, device.tracker.cbt.serialize()]));
  }

  async forgetTracker(name: string): Promise<void> {
    await fs.promises.rm(this.#trackerFile(name), { force: true });
  }
}
