// Owns the library's daemon-wide calls (blksnap's Service): version, attach, detach, list.
import * as api from '../control/protocol.js';
import { BlksnapClient } from './connection.js';

/** Daemon-wide calls: version, attach, detach, list. */
export class Service {
  readonly client: BlksnapClient;

  constructor(client: BlksnapClient) {
    this.client = client;
  }

  static async connect(controlPath?: string): Promise<Service> {
    return new Service(await BlksnapClient.connect(controlPath));
  }

  version(): Promise<api.VersionResult> {
    return this.client.call(api.Version, {});
  }

  attach(params: api.AttachParams): Promise<api.DeviceInfo> {
    return this.client.call(api.DeviceAttach, params);
  }

  async detach(device: string): Promise<void> {
    await this.client.call(api.DeviceDetach, { device });
  }

  async list(): Promise<api.DeviceInfo[]> {
    return (await this.client.call(api.DeviceList, {})).devices;
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
