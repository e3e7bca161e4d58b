// Owns what the daemon keeps in --state-dir so attached devices come back at the next start;
// their change tracking is kept beside it by the CBT keeper (src/cbt).
import * as fs from 'node:fs';
import * as path from 'node:path';
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
const DEVICES_VERSION = 1;

export class DeviceState {
  #dir: string;

  constructor(stateDir: string) {
    this.#dir = stateDir;
  }

  get #devicesFile(): string {
    return path.join(this.#dir, 'devices.state');
  }

  /** The devices to attach again; none (with the reason) when the file is missing or damaged. */
  async loadAttached(): Promise<{ records: AttachedRecord[]; reason?: string }> {
    const r = await readStateFile(this.#devicesFile, DEVICES_KIND, DEVICES_VERSION);
    if (!r.ok) return { records: [], reason: r.reason };
    try {
      return { records: JSON.parse(r.payload.toString('utf8')) as AttachedRecord[] };
    } catch {
      return { records: [], reason: `${this.#devicesFile} does not hold a device list` };
    }
  }

  async saveAttached(records: readonly AttachedRecord[]): Promise<void> {
    await fs.promises.mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await writeStateFile(this.#devicesFile, DEVICES_KIND, DEVICES_VERSION, Buffer.from(JSON.stringify(records)));
  }
}
