// Owns what control handlers get from the daemon, and the shape of a handler.
import type { Registry } from '../core/registry.js';
import type { Snapshot } from '../core/snapshot.js';
import type { Params } from './validate.js';
import type { SameStore } from '../daemon/own-paths.js';

export interface DaemonContext {
  registry: Registry;
  /** NBD URI of an export on the daemon's Unix socket. */
  exportUri(name: string): string;
  /** Options every FileStorage of an attach gets. */
  storageOptions: { cachedReadMaximum: number; syncWriteMaximum: number };
  /** Takes a snapshot the daemon's way (image names, filesystem freeze); resolves with warnings. */
  takeSnapshot(snapshot: Snapshot): Promise<string[]>;
  /** Destroys a snapshot, its images' block devices first. */
  destroySnapshot(snapshot: Snapshot): Promise<void>;
  /** Kernel block devices of exports (loop devices over FUSE files). */
  loopDevices: {
    get(exportName: string): string | undefined;
    mountPoints(exportName: string): string[];
    expose(exportName: string): Promise<string>;
    release(exportName: string): Promise<void>;
  };
  /**
   * EINVAL when a path a client gave is, or lies on, a device this daemon serves (its stores, its
   * loop devices, its FUSE files); looked at off the event loop.
   */
  refuseOwnPath(path: string, purpose: string, sameStore?: SameStore): Promise<void>;
  /** Every device attached gets a kernel block device (blksnapd --loop). */
  isLoopForAll: boolean;
  log(line: string): void;
}

export type Handler = (params: Params, ctx: DaemonContext) => Promise<unknown>;
