// Owns the library's Cbt: the change tracking of one device, as blksnap's C++ ICbt.
import * as api from '../control/protocol.js';
import type { BlksnapClient } from './connection.js';

/** Change-block tracking of one device (blksnap's ICbt). */
export class Cbt {
  readonly client: BlksnapClient;
  readonly device: string;

  constructor(client: BlksnapClient, device: string) {
    this.client = client;
    this.device = device;
  }

  info(): Promise<api.CbtInfo> {
    return this.client.call(api.CbtGetInfo, { device: this.device });
  }

  /** The whole read map: one byte per tracking block, the snapshot number that last changed it. */
  async readMap(): Promise<Uint8Array> {
    const { blockCount } = await this.info();
    const map = new Uint8Array(blockCount);
    const piece = 16 * 1024 * 1024;
    for (let offset = 0; offset < blockCount; offset += piece) {
      const r = await this.client.call(api.CbtRead, { device: this.device, offset, length: Math.min(piece, blockCount - offset) });
      map.set(Buffer.from(r.data, 'base64'), offset);
    }
    return map;
  }

  async markDirty(ranges: api.SectorRange[]): Promise<void> {
    await this.client.call(api.CbtMarkDirty, { device: this.device, ranges });
  }

  /** Switches the maps as a take does (see control/protocol.ts CbtSwitch). */
  switch(): Promise<api.CbtInfo> {
    return this.client.call(api.CbtSwitch, { device: this.device });
  }
}
