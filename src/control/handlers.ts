// Owns the control methods: untrusted params in, type guards, one core call, a typed result out.
import { FileStorage } from '../backing/file-storage.js';
import { fileExtentsOn } from '../os/async-fs.js';
import type { Device } from '../core/device.js';
import { BlkError } from '../errors.js';
import { SECTOR_SIZE, control as limits } from '../params.js';
import type { DaemonContext, Handler } from './handlers-context.js';
import * as api from './protocol.js';
import { snapshotHandlers } from './snapshot-handlers.js';
import { asParams, optionalBoolean, optionalString, requireArray, requireInteger, requireString, type Params } from './validate.js';

export type { DaemonContext } from './handlers-context.js';

export const BLKSNAP_VERSION = '2.0.0';

export function deviceInfo(device: Device, ctx: DaemonContext): api.DeviceInfo {
  const blockDevice = ctx.loopDevices.get(device.name);
  return {
    name: device.name,
    path: device.path,
    size: device.size,
    uri: ctx.exportUri(device.name),
    ...(blockDevice ? { blockDevice } : {}),
    readOnly: device.isReadOnly,
    tracking: device.tracker.isTracking,
  };
}

function cbtInfo(device: Device): api.CbtInfo {
  const cbt = device.tracker.cbt;
  return {
    deviceCapacity: cbt.capacity,
    blockSize: cbt.blockSize,
    blockCount: cbt.blockCount,
    generationId: cbt.generationId,
    changesNumber: cbt.previousNumber,
  };
}

/**
 * The extents of a file on a filesystem mounted from a device's block device, as byte ranges of the
 * device. The file lies on this daemon's own device by design: every call on it runs in the thread
 * pool (os/async-fs.ts), since its blocks may have to come through this very event loop.
 */
async function fileRanges(file: string, deviceName: string, ctx: DaemonContext): Promise<Array<{ offset: number; length: number }>> {
  const blockDevice = ctx.loopDevices.get(deviceName);
  if (!blockDevice) throw new BlkError('EINVAL', `device ${deviceName} has no block device (attach it with --loop) to hold ${file}`);
  return fileExtentsOn(file, blockDevice);
}

function lookup(p: Params, ctx: DaemonContext, method: string): Promise<Device> {
  return ctx.registry.find(requireString(p, 'device', method));
}

const deviceHandlers: Record<string, Handler> = {
  async [api.Version.name]() {
    return { version: BLKSNAP_VERSION, protocol: api.CONTROL_PROTOCOL_VERSION } satisfies api.VersionResult;
  },

  async [api.DeviceAttach.name](p, ctx) {
    const m = api.DeviceAttach.name;
    const path = requireString(p, 'path', m);
    const name = optionalString(p, 'name', m);
    const readOnly = optionalBoolean(p, 'readOnly', m) ?? false;
    const tracking = optionalBoolean(p, 'tracking', m) ?? true;
    await ctx.refuseOwnPath(path, 'store');
    const storage = await FileStorage.open(path, { readOnly, ...ctx.storageOptions });
    const device = await ctx.registry.attach(storage, { tracking, ...(name === undefined ? {} : { name }) });
    ctx.log(`attached ${device.path} as ${device.name} (${device.size} bytes${readOnly ? ', read-only' : ''}${tracking ? '' : ', untracked'})`);
    if (optionalBoolean(p, 'loop', m) ?? ctx.isLoopForAll) {
      try {
        await ctx.loopDevices.expose(device.name);
      } catch (e) {
        await ctx.registry.detach(device);
        throw e;
      }
    }
    return deviceInfo(device, ctx);
  },

  async [api.DeviceDetach.name](p, ctx) {
    const device = await lookup(p, ctx, api.DeviceDetach.name);
    ctx.registry.checkDetachable(device); // before its block device goes away
    const mounted = ctx.loopDevices.mountPoints(device.name);
    if (mounted.length) throw new BlkError('EBUSY', `device ${device.name} is mounted on ${mounted.join(', ')}; unmount it first`);
    await ctx.loopDevices.release(device.name);
    await ctx.registry.detach(device);
    ctx.log(`detached ${device.name}`);
    return {};
  },

  async [api.DeviceList.name](_p, ctx) {
    return { devices: ctx.registry.devices().map((d) => deviceInfo(d, ctx)) };
  },

  async [api.CbtGetInfo.name](p, ctx) {
    return cbtInfo(await lookup(p, ctx, api.CbtGetInfo.name));
  },

  async [api.CbtRead.name](p, ctx) {
    const m = api.CbtRead.name;
    const device = await lookup(p, ctx, m);
    const offset = requireInteger(p, 'offset', m);
    const length = requireInteger(p, 'length', m, 0, limits.maximumCbtReadLength);
    const cbt = device.tracker.cbt;
    if (offset > cbt.blockCount) throw new BlkError('EINVAL', `${m}: offset ${offset} is past the map's ${cbt.blockCount} blocks`);
    return { offset, data: Buffer.from(cbt.readMap(offset, length)).toString('base64') } satisfies api.CbtReadResult;
  },

  async [api.CbtMarkDirty.name](p, ctx) {
    const m = api.CbtMarkDirty.name;
    const device = await lookup(p, ctx, m);
    const file = optionalString(p, 'file', m);
    if (file !== undefined) {
      device.markDirty(await fileRanges(file, device.name, ctx));
      return {};
    }
    const ranges = requireArray(p, 'ranges', m, 65536).map((r, i) => {
      const range = asParams(r, `${m} ranges[${i}]`);
      const sector = requireInteger(range, 'sector', `${m} ranges[${i}]`);
      const count = requireInteger(range, 'count', `${m} ranges[${i}]`, 1);
      return { offset: sector * SECTOR_SIZE, length: count * SECTOR_SIZE };
    });
    device.markDirty(ranges);
    return {};
  },

  async [api.CbtSwitch.name](p, ctx) {
    const device = await lookup(p, ctx, api.CbtSwitch.name);
    const tracker = device.tracker;
    await tracker.hold();
    try {
      await device.storage.flush();
      tracker.switchCbt();
    } finally {
      tracker.release();
    }
    return cbtInfo(device);
  },
};

const handlers: Record<string, Handler> = { ...deviceHandlers, ...snapshotHandlers };

/** Runs one method; unknown methods are EINVAL. */
export function dispatch(method: string, params: unknown, ctx: DaemonContext): Promise<unknown> {
  const handler = Object.hasOwn(handlers, method) ? handlers[method] : undefined;
  if (!handler) return Promise.reject(new BlkError('EINVAL', `unknown control method '${method}'`));
  try {
    return handler(asParams(params, method), ctx);
  } catch (e) {
    return Promise.reject(e);
  }
}
