// Owns the control methods: each is untrusted params → a typed parse (EINVAL with the reason) → one
// ControlService call. The table is the whole of what the control socket can ask.
import { BlkError } from '../errors.js';
import { SECTOR_SIZE, control as limits } from '../params.js';
import * as api from './protocol.js';
import type { Caller, ControlService } from './service.js';
import { asParams, optionalBoolean, optionalString, requireArray, requireInteger, requireString, type Params } from './validate.js';

export type Handler = (params: Params, caller: Caller) => Promise<unknown>;

/** A caller for requests that come on no connection (tests, fuzzing): nothing of theirs ever closes. */
export const NO_CALLER: Caller = { onClose: () => undefined, peer: null };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function snapshotId(p: Params, method: string): string {
  const id = requireString(p, 'id', method);
  if (!UUID.test(id)) throw new BlkError('EINVAL', `${method}: '${id}' is not a snapshot UUID`);
  return id.toLowerCase();
}

function absolutePath(p: Params, key: string, method: string): string {
  const value = requireString(p, key, method);
  if (!value.startsWith('/')) throw new BlkError('EINVAL', `${method}: ${key} '${value}' is not an absolute path`);
  return value;
}

function optionalInteger(p: Params, key: string, method: string, minimum: number, maximum: number): number | undefined {
  return p[key] === undefined ? undefined : requireInteger(p, key, method, minimum, maximum);
}

function parseAttach(p: Params, m: string): api.AttachParams {
  const name = optionalString(p, 'name', m);
  const readOnly = optionalBoolean(p, 'readOnly', m);
  const tracking = optionalBoolean(p, 'tracking', m);
  const loop = optionalBoolean(p, 'loop', m);
  return {
    path: requireString(p, 'path', m),
    ...(name === undefined ? {} : { name }),
    ...(readOnly === undefined ? {} : { readOnly }),
    ...(tracking === undefined ? {} : { tracking }),
    ...(loop === undefined ? {} : { loop }),
  };
}

function parseDirty(p: Params, m: string): { ranges: Array<{ offset: number; length: number }> } | { file: string } {
  const file = optionalString(p, 'file', m);
  if (file !== undefined) return { file };
  const ranges = requireArray(p, 'ranges', m, 65536).map((r, i) => {
    const range = asParams(r, `${m} ranges[${i}]`);
    const sector = requireInteger(range, 'sector', `${m} ranges[${i}]`);
    const count = requireInteger(range, 'count', `${m} ranges[${i}]`, 1);
    return { offset: sector * SECTOR_SIZE, length: count * SECTOR_SIZE };
  });
  return { ranges };
}

function parseSnapshotCreate(p: Params, m: string): api.SnapshotCreateParams {
  const devices = requireArray(p, 'devices', m, 256).map((d, i) => {
    if (typeof d !== 'string' || d === '') throw new BlkError('EINVAL', `${m}: devices[${i}] must be a device name or path`);
    return d;
  });
  const diffStorageMinimum = optionalInteger(p, 'diffStorageMinimum', m, 4096, Number.MAX_SAFE_INTEGER);
  const chunkMinimumShift = optionalInteger(p, 'chunkMinimumShift', m, 12, 26);
  const chunkMaximumInQueue = optionalInteger(p, 'chunkMaximumInQueue', m, 1, 65536);
  return {
    devices,
    diffStorage: requireString(p, 'diffStorage', m),
    limit: requireInteger(p, 'limit', m, 4096),
    ...(diffStorageMinimum === undefined ? {} : { diffStorageMinimum }),
    ...(chunkMinimumShift === undefined ? {} : { chunkMinimumShift }),
    ...(chunkMaximumInQueue === undefined ? {} : { chunkMaximumInQueue }),
    ...(optionalBoolean(p, 'ownedByConnection', m) ? { ownedByConnection: true } : {}),
    ...(optionalBoolean(p, 'force', m) ? { force: true } : {}),
  };
}

/** A client's access to a bucket, checked field by field. */
function parseS3Access(v: unknown, m: string): api.S3Access {
  const p = asParams(v, `${m}: s3`);
  const endpoint = optionalString(p, 'endpoint', m);
  if (endpoint !== undefined && !/^https?:\/\/[^/\s]+\/?$/.test(endpoint)) throw new BlkError('EINVAL', `${m}: s3.endpoint '${endpoint}' is not http(s)://HOST[:PORT]`);
  const region = requireString(p, 'region', m);
  if (!/^[a-z0-9-]{1,64}$/.test(region)) throw new BlkError('EINVAL', `${m}: s3.region '${region}' is not a region name`);
  const ca = p.ca;
  if (ca !== undefined && (typeof ca !== 'string' || ca.length > 1024 * 1024 || !ca.includes('-----BEGIN CERTIFICATE-----'))) throw new BlkError('EINVAL', `${m}: s3.ca must be PEM certificates of at most 1 MiB`);
  const sessionToken = optionalString(p, 'sessionToken', m);
  return {
    ...(endpoint === undefined ? {} : { endpoint }),
    region,
    pathStyle: optionalBoolean(p, 'pathStyle', m) ?? false,
    ...(ca === undefined ? {} : { ca: ca as string }),
    accessKeyId: requireString(p, 'accessKeyId', m),
    secretAccessKey: requireString(p, 'secretAccessKey', m),
    ...(sessionToken === undefined ? {} : { sessionToken }),
  };
}

function parseBackupAttach(p: Params, m: string): api.BackupAttachParams {
  const name = optionalString(p, 'name', m);
  const secret = optionalString(p, 'secret', m);
  if (secret !== undefined && !/^[A-Za-z0-9+/]{43}=$/.test(secret)) throw new BlkError('EINVAL', `${m}: secret must be 32 bytes, base64`);
  return {
    ...(secret === undefined ? {} : { secret }),
    repo: requireString(p, 'repo', m),
    id: requireString(p, 'id', m),
    device: requireString(p, 'device', m),
    ...(name === undefined ? {} : { name }),
    ...(optionalBoolean(p, 'loop', m) ? { loop: true } : {}),
    ...(optionalBoolean(p, 'writable', m) ? { writable: true } : {}),
    ...(p.s3 === undefined ? {} : { s3: parseS3Access(p.s3, m) }),
  };
}

/**
 * One entry: the method's name, and a handler whose result is the method's result type. `run`
 * gets the params parsed, so a handler reads as "method → service call".
 */
function on<P, R>(m: api.Method<P, R>, run: (p: Params, method: string, caller: Caller) => Promise<R> | R): [string, Handler] {
  return [m.name, async (p, caller) => run(p, m.name, caller)];
}

/** The control methods over a service. */
export function controlHandlers(s: ControlService): ReadonlyMap<string, Handler> {
  const device = (p: Params, m: string): string => requireString(p, 'device', m);
  /** The empty result of a method that answers only "done". */
  const done = (work: Promise<void>): Promise<Record<string, never>> => work.then(() => ({}));
  return new Map<string, Handler>([
    on(api.Version, () => s.version()),
    on(api.DeviceAttach, (p, m) => s.attach(parseAttach(p, m))),
    on(api.DeviceDetach, (p, m) => done(s.detach(device(p, m)))),
    on(api.DeviceList, () => ({ devices: s.list() })),
    on(api.DeviceInfoOf, (p, m) => s.deviceInfo(device(p, m))),
    on(api.DeviceResolve, (p, m) => s.resolvePath(absolutePath(p, 'path', m))),
    on(api.CbtGetInfo, (p, m) => s.cbtInfo(device(p, m))),
    on(api.CbtRead, (p, m) => s.readCbt(device(p, m), requireInteger(p, 'offset', m), requireInteger(p, 'length', m, 0, limits.maximumCbtReadLength))),
    on(api.CbtMarkDirty, (p, m) => done(s.markDirty(device(p, m), parseDirty(p, m)))),
    on(api.CbtSwitch, (p, m) => s.switchCbt(device(p, m))),
    on(api.SnapshotCreate, (p, m, caller) => s.createSnapshot(parseSnapshotCreate(p, m), caller)),
    on(api.BackupAttach, (p, m) => s.attachBackup(parseBackupAttach(p, m))),
    on(api.SnapshotAdd, (p, m) => done(s.addToSnapshot(snapshotId(p, m), device(p, m)))),
    on(api.SnapshotTake, (p, m) => s.takeSnapshot(snapshotId(p, m))),
    on(api.SnapshotCollect, () => ({ ids: s.snapshotIds() })),
    on(api.SnapshotGetInfo, (p, m) => s.snapshotInfo(device(p, m))),
    on(api.SnapshotWaitEvent, (p, m) => s.waitEvent(snapshotId(p, m), requireInteger(p, 'timeoutMs', m, 0, limits.maximumWaitMs))),
    on(api.SnapshotDestroy, (p, m) => done(s.destroySnapshot(snapshotId(p, m)))),
  ]);
}

/** Runs one method; unknown methods are EINVAL. */
export function dispatch(handlers: ReadonlyMap<string, Handler>, method: string, params: unknown, caller: Caller = NO_CALLER): Promise<unknown> {
  const handler = handlers.get(method);
  if (!handler) return Promise.reject(new BlkError('EINVAL', `unknown control method '${method}'`));
  try {
    return handler(asParams(params, method), caller);
  } catch (e) {
    return Promise.reject(e);
  }
}
