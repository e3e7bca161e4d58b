// Owns the package's public client library: Service (devices) and Cbt (change tracking), like blksnap's C++ library;
// Repository (backups) and NbdClient (reading and writing exports).
import * as api from '../control/protocol.js';
import { BlksnapClient } from './connection.js';

export { BlksnapClient } from './connection.js';
export { Cbt } from './cbt.js';
export { Session, type SessionOptions } from './session.js';
export { defaultControlPath } from '../control/paths.js';
export { BlkError, type Errno } from '../errors.js';
export { NbdClient, parseNbdUri, type Extent, type NbdTarget, type NbdTlsOptions } from './nbd-client.js';
export { Repository, type BackupSummary, type RepositoryConfig } from '../backup/repository.js';
export type { CreateOptions, CreateResult } from '../backup/backup-create.js';
export type { RestoreOptions, RestoreResult } from '../backup/backup-restore.js';
export type { VerifyOptions, VerifyResult } from '../backup/backup-verify.js';
export type { PruneOptions, PruneResult } from '../backup/backup-prune.js';
export type { Progress } from '../backup/progress.js';
export type { AttachParams, BackupAttachParams, CbtInfo, DeviceInfo, ImageInfo, SectorRange, SnapshotEventResult, SnapshotInfo, VersionResult } from '../control/protocol.js';

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
