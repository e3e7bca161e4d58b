// Owns what a restore's --to names, by one rule that cannot surprise: device:NAME is an attached
// device, an NBD URI is that export, anything else is a path. A path that is an attached device's
// store (by identity: a symlink, a hard link, a bind mount or /dev/disk/by-* name too) is restored
// through the daemon, so its change tracking sees every write; a path on or under the daemon's
// devices, a mounted or held block device, or a loop device's backing file is refused.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BlksnapClient } from '../client/connection.js';
import { parseNbdUri } from '../client/nbd-client.js';
import * as api from '../control/protocol.js';
import { BlkError } from '../errors.js';
import { loopDevicesBackedBy } from '../os/block-identity.js';

export type RestoreTarget =
  /** An attached device: written through the daemon over NBD (a rollback where its generation allows). */
  | { kind: 'device'; device: api.DeviceInfo }
  | { kind: 'nbd'; uri: string }
  | { kind: 'block'; path: string }
  | { kind: 'file'; path: string };

/** The daemon as a restore sees it: a client, or why there is none. */
export type Daemon = { client: BlksnapClient } | { unreachable: string };

export const DEVICE_PREFIX = 'device:';

export async function resolveTarget(to: string, daemon: Daemon, options: { offline?: boolean } = {}): Promise<RestoreTarget> {
  if (to.startsWith(DEVICE_PREFIX)) {
    const name = to.slice(DEVICE_PREFIX.length);
    if (!('client' in daemon)) throw new BlkError('ENOENT', `--to ${to} names an attached device, but blksnapd cannot be reached: ${daemon.unreachable}`);
    const device = (await daemon.client.call(api.DeviceList, {})).devices.find((d) => d.name === name);
    if (!device) throw new BlkError('ENOENT', `--to ${to}: no attached device is named ${name}`);
    return { kind: 'device', device };
  }
  if (to.includes('://')) {
    if ('client' in daemon) {
      const device = await exportOf(daemon.client, to);
      if (device) return { kind: 'device', device };
    }
    return { kind: 'nbd', uri: to };
  }
  const target = path.resolve(to);
  const st = await fs.promises.stat(target).catch(() => null);
  if ('client' in daemon) {
    if (!to.includes('/') && st === null && (await daemon.client.call(api.DeviceList, {})).devices.some((d) => d.name === to)) {
      throw new BlkError('EINVAL', `--to ${to}: write device:${to} for the attached device, or ./${to} for a new file here`);
    }
    const r = await daemon.client.call(api.DeviceResolve, { path: target });
    if (r.device) return { kind: 'device', device: r.device };
    if (r.refusal) throw new BlkError('EBUSY', `--to ${to}: ${r.refusal}; writing it behind blksnapd would bypass its change tracking`);
  } else if (st !== null && !options.offline) {
    throw new BlkError('EBUSY', `--to ${to} exists, and blksnapd cannot be reached to say whether it is attached (${daemon.unreachable}); give --offline if no daemon uses it`);
  }
  if (st?.isBlockDevice()) return { kind: 'block', path: target };
  if (st !== null && !st.isFile()) throw new BlkError('EINVAL', `--to ${to} is neither a regular file nor a block device`);
  if (st !== null) {
    const loops = await loopDevicesBackedBy(st.dev, st.ino);
    if (loops.length > 0) throw new BlkError('EBUSY', `--to ${to} is the backing file of ${loops.join(', ')}; detach it first (losetup -d)`);
  }
  return { kind: 'file', path: target };
}

/** The attached device an NBD URI of the daemon's own Unix socket names, if any. */
async function exportOf(client: BlksnapClient, uri: string): Promise<api.DeviceInfo | null> {
  const devices = (await client.call(api.DeviceList, {})).devices;
  const wanted = parseNbdUri(uri);
  if (wanted.socketPath === undefined) return null;
  return (
    devices.find((d) => {
      const t = parseNbdUri(d.uri);
      return t.exportName === wanted.exportName && t.socketPath !== undefined && path.resolve(t.socketPath) === path.resolve(wanted.socketPath as string);
    }) ?? null
  );
}
