// Owns what the control API asks of the daemon: one call per method, typed by the protocol catalogue.
import type * as api from './protocol.js';

/** Devices to mark dirty: sector ranges as bytes, or a file's extents on the device's block device. */
export type DirtyRanges = { ranges: Array<{ offset: number; length: number }> } | { file: string };

/** The control connection a request came on: what it owns ends when it closes. */
export interface Caller {
  onClose(run: () => void): void;
  /** Who is asking (SO_PEERCRED of the control connection); null where it came on no connection. */
  readonly peer: { uid: number; pid: number } | null;
}

/**
 * The daemon as the control methods see it. Each method of protocol.ts is one call here, so the
 * handlers only check and convert parameters; life cycles (attach with its block device, take with
 * its freeze, destroy, the CBT switch) live behind it, in one place.
 */
export interface ControlService {
  version(): api.VersionResult;
  attach(params: api.AttachParams): Promise<api.DeviceInfo>;
  detach(device: string): Promise<void>;
  list(): api.DeviceInfo[];
  deviceInfo(device: string): Promise<api.DeviceInfo>;
  resolvePath(path: string): Promise<api.ResolveResult>;
  cbtInfo(device: string): Promise<api.CbtInfo>;
  readCbt(device: string, firstBlock: number, blockCount: number): Promise<api.CbtReadResult>;
  markDirty(device: string, what: DirtyRanges): Promise<void>;
  switchCbt(device: string): Promise<api.CbtInfo>;
  createSnapshot(params: api.SnapshotCreateParams, caller: Caller): Promise<{ id: string }>;
  attachBackup(params: api.BackupAttachParams): Promise<api.DeviceInfo>;
  addToSnapshot(id: string, device: string): Promise<void>;
  takeSnapshot(id: string): Promise<{ id: string; warnings: string[] }>;
  snapshotIds(): string[];
  snapshotInfo(device: string): Promise<api.SnapshotInfo>;
  waitEvent(id: string, timeoutMs: number): Promise<api.SnapshotEventResult>;
  destroySnapshot(id: string): Promise<void>;
}
