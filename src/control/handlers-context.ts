// Owns what control handlers get from the daemon, and the shape of a handler.
import type { Registry } from '../core/registry.js';
import type { Snapshot } from '../core/snapshot.js';
import type { Params } from './validate.js';

export interface DaemonContext {
  registry: Registry;
  /** NBD URI of an export on the daemon's Unix socket. */
  exportUri(name: string): string;
  /** Options every FileStorage of an attach gets. */
  storageOptions: { cachedReadMaximum: number; syncWriteMaximum: number };
  /** Takes a snapshot the daemon's way (image names, filesystem freeze); resolves with warnings. */
  takeSnapshot(snapshot: Snapshot): Promise<string[]>;
  log(line: string): void;
}

export type Handler = (params: Params, ctx: DaemonContext) => Promise<unknown>;
