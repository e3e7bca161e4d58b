// Owns the snapshot control methods: create, add, take, collect, info, waitEvent, destroy.
import { BlkError } from '../errors.js';
import * as api from './protocol.js';
import type { DaemonContext, Handler } from './handlers-context.js';
import { requireArray, requireInteger, requireString, type Params } from './validate.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAXIMUM_WAIT_MS = 24 * 3600 * 1000;

function snapshotOf(p: Params, ctx: DaemonContext, method: string) {
  const id = requireString(p, 'id', method);
  if (!UUID.test(id)) throw new BlkError('EINVAL', `${method}: '${id}' is not a snapshot UUID`);
  return ctx.registry.snapshot(id.toLowerCase());
}

function imageInfo(name: string, ctx: DaemonContext): api.ImageInfo {
  const blockDevice = ctx.loopDevices.get(name);
  return { name, uri: ctx.exportUri(name), ...(blockDevice ? { blockDevice } : {}) };
}

function optionalInteger(p: Params, key: string, method: string, minimum: number, maximum: number): number | undefined {
  return p[key] === undefined ? undefined : requireInteger(p, key, method, minimum, maximum);
}

export const snapshotHandlers: Record<string, Handler> = {
  async [api.SnapshotCreate.name](p, ctx) {
    const m = api.SnapshotCreate.name;
    const names = requireArray(p, 'devices', m, 256).map((d, i) => {
      if (typeof d !== 'string' || d === '') throw new BlkError('EINVAL', `${m}: devices[${i}] must be a device name or path`);
      return d;
    });
    const devices = await Promise.all(names.map((n) => ctx.registry.find(n)));
    if (new Set(devices).size !== devices.length) throw new BlkError('EINVAL', `${m}: a device is listed twice`);
    const diffStorageMinimum = optionalInteger(p, 'diffStorageMinimum', m, 4096, Number.MAX_SAFE_INTEGER);
    const chunkMinimumShift = optionalInteger(p, 'chunkMinimumShift', m, 12, 26);
    const chunkMaximumInQueue = optionalInteger(p, 'chunkMaximumInQueue', m, 1, 65536);
    const diffStorage = requireString(p, 'diffStorage', m);
    await ctx.refuseOwnPath(diffStorage, 'difference storage', (name, what) =>
      devices.some((d) => d.name === name) ? new BlkError('EINVAL', `${what} is a device of this snapshot (${name})`) : new BlkError('EBUSY', `${what} is the store of attached device ${name}, in use`));
    const snapshot = await ctx.registry.createSnapshot(devices, {
      diffStorage,
      limit: requireInteger(p, 'limit', m, 4096),
      ...(diffStorageMinimum === undefined ? {} : { diffStorageMinimum }),
      ...(chunkMinimumShift === undefined ? {} : { chunkMinimumShift }),
      ...(chunkMaximumInQueue === undefined ? {} : { chunkMaximumInQueue }),
    });
    ctx.log(`snapshot ${snapshot.id} created: ${devices.map((d) => d.name).join(', ')}; difference storage ${snapshot.options.diffStorage} (${snapshot.diffStorage?.kind}), limit ${snapshot.options.limit}`);
    snapshot.events.onPush((e) => ctx.log(`snapshot ${snapshot.id}: ${e.code} ${JSON.stringify(e.data)}`));
    return { id: snapshot.id };
  },

  async [api.SnapshotAdd.name](p, ctx) {
    const m = api.SnapshotAdd.name;
    const snapshot = snapshotOf(p, ctx, m);
    const device = await ctx.registry.find(requireString(p, 'device', m));
    snapshot.add(device);
    return {};
  },

  async [api.SnapshotTake.name](p, ctx) {
    const snapshot = snapshotOf(p, ctx, api.SnapshotTake.name);
    const started = process.hrtime.bigint();
    const warnings = await ctx.takeSnapshot(snapshot);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    ctx.log(`snapshot ${snapshot.id} taken in ${ms.toFixed(1)} ms${warnings.length ? `; ${warnings.join('; ')}` : ''}`);
    return { id: snapshot.id, warnings };
  },

  async [api.SnapshotCollect.name](_p, ctx) {
    return { ids: ctx.registry.snapshots().map((s) => s.id) };
  },

  async [api.SnapshotGetInfo.name](p, ctx) {
    const device = await ctx.registry.find(requireString(p, 'device', api.SnapshotGetInfo.name));
    const id = device.tracker.snapshotId;
    if (id === null) return { id: null, errorCode: 0, image: null } satisfies api.SnapshotInfo;
    const snapshot = ctx.registry.snapshot(id);
    const image = snapshot.image(device);
    return {
      id,
      errorCode: snapshot.error ? -snapshot.error.errno : 0,
      image: image ? imageInfo(image.name, ctx) : null,
    } satisfies api.SnapshotInfo;
  },

  async [api.SnapshotWaitEvent.name](p, ctx) {
    const m = api.SnapshotWaitEvent.name;
    const snapshot = snapshotOf(p, ctx, m);
    const timeoutMs = requireInteger(p, 'timeoutMs', m, 0, MAXIMUM_WAIT_MS);
    const event = await snapshot.waitEvent(timeoutMs);
    if (!event) return { code: 'timeout', time: Date.now(), data: {} } satisfies api.SnapshotEventResult;
    return { code: event.code, time: event.time, data: { ...event.data } } satisfies api.SnapshotEventResult;
  },

  async [api.SnapshotDestroy.name](p, ctx) {
    const snapshot = snapshotOf(p, ctx, api.SnapshotDestroy.name);
    await ctx.destroySnapshot(snapshot);
    ctx.log(`snapshot ${snapshot.id} destroyed`);
    return {};
  },
};
