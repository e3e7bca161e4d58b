// Owns the control API contract (our blksnap uapi): one typed method catalogue shared by daemon, client and CLI.
// Wire: JSON-RPC 2.0, one JSON object per line, over a Unix socket of mode 0600. Only ever extended.

/** Version of this catalogue; bumped when methods or fields are added. */
export const CONTROL_PROTOCOL_VERSION = 1;

export interface Method<P, R> {
  readonly name: string;
  /** Changes what the daemon holds (devices, snapshots, CBT): the daemon logs who asked. */
  readonly changesState: boolean;
  /** Carries the types only; never set. */
  readonly types?: [P, R];
}

const stateChanging = new Set<string>();

function method<P, R>(name: string, changesState = false): Method<P, R> {
  if (changesState) stateChanging.add(name);
  return { name, changesState };
}

/** Whether a method (by its wire name) changes what the daemon holds. */
export function isStateChanging(name: string): boolean {
  return stateChanging.has(name);
}

export interface VersionResult {
  /** blksnap's version string. */
  version: string;
  protocol: number;
}

export interface AttachParams {
  /** Path of a regular file or a block device. */
  path: string;
  /** Export name; default: the path's base name. */
  name?: string;
  readOnly?: boolean;
  /** false attaches without change tracking (a plain export, e.g. to compare speed). Default true. */
  tracking?: boolean;
  /** Also expose the device as a Linux block device (/dev/loopN); its images get one too. */
  loop?: boolean;
}

export interface DeviceInfo {
  name: string;
  path: string;
  size: number;
  /** NBD URI of the device's export on the daemon's Unix socket. */
  uri: string;
  /** Linux block device of the device, when it has one. */
  blockDevice?: string;
  readOnly: boolean;
  tracking: boolean;
}

export interface DeviceParams {
  /** The device's name, or the path it was attached from. */
  device: string;
}

export interface CbtInfo {
  deviceCapacity: number;
  blockSize: number;
  blockCount: number;
  generationId: string;
  /** The number of the last taken snapshot (blksnap's changes_number). */
  changesNumber: number;
  /** Where the map came from: new (see originReason), or restored as saved at a clean stop. */
  origin: 'new' | 'restored' | 'recovered';
  /** Why the generation is new, for origin "new". */
  originReason?: string;
}

export interface CbtReadParams extends DeviceParams {
  /** First block of the piece. */
  offset: number;
  /** Blocks to read, at most 16 MiB in one call. */
  length: number;
}

export interface CbtReadResult {
  offset: number;
  /** The read map's bytes, base64; shorter than asked at the map's end. */
  data: string;
}

export interface SectorRange {
  sector: number;
  count: number;
}

export interface MarkDirtyParams extends DeviceParams {
  /** Sector ranges; or give `file`. */
  ranges?: SectorRange[];
  /** A file on a filesystem mounted from the device's block device: its extents (FIEMAP) are marked. */
  file?: string;
}

export interface ResolveParams {
  /** An absolute path a client would write directly. */
  path: string;
}

export interface ResolveResult {
  /** The attached device whose store the path is (by identity: links, bind mounts and /dev/disk/by-* names too), or null. */
  device: DeviceInfo | null;
  /** Why the path must not be written behind the daemon (it is or lies on one of its devices, or a store lies on it), or null. */
  refusal: string | null;
}

export const Version = method<Record<string, never>, VersionResult>('version');
export const DeviceAttach = method<AttachParams, DeviceInfo>('device.attach', true);
export const DeviceDetach = method<DeviceParams, Record<string, never>>('device.detach', true);
export const DeviceList = method<Record<string, never>, { devices: DeviceInfo[] }>('device.list');
/** One attached device by its name, or by a path to its store (absolute; matched by identity). */
export const DeviceInfoOf = method<DeviceParams, DeviceInfo>('device.info');
/** What a path is to the daemon, for a client about to write it directly (backup_restore). */
export const DeviceResolve = method<ResolveParams, ResolveResult>('device.resolve');
export const CbtGetInfo = method<DeviceParams, CbtInfo>('cbt.info');
export const CbtRead = method<CbtReadParams, CbtReadResult>('cbt.read');
export const CbtMarkDirty = method<MarkDirtyParams, Record<string, never>>('cbt.markDirty', true);
/**
 * The CBT switch a snapshot take performs, alone: holds writes, drains, flushes, switches. For
 * tools that keep their own point-in-time copy, and for tests.
 */
export const CbtSwitch = method<DeviceParams, CbtInfo>('cbt.switch', true);

/** JSON-RPC error object: code is the negative errno, data.errno its name. */
export interface RpcError {
  code: number;
  message: string;
  data: { errno: string };
}

export interface RpcRequest {
  jsonrpc: '2.0';
  id: number | string | null;
  method: string;
  params?: unknown;
}

export type RpcResponse =
  | { jsonrpc: '2.0'; id: number | string | null; result: unknown }
  | { jsonrpc: '2.0'; id: number | string | null; error: RpcError };

/** A device of a backup in a repository, served as a device (read-only, or with a throw-away overlay). */
export interface BackupAttachParams {
  repo: string;
  id: string;
  device: string;
  /** The export name (default DEVICE@ID with '@' as '.', e.g. vm.img.20261127T184000Z-ab12). */
  name?: string;
  loop?: boolean;
  writable?: boolean;
  /**
   * An encrypted repository's secret, base64 (the client unwrapped it with its key): used for this
   * attach only, kept in memory, never written or logged.
   */
  secret?: string;
  /** How the daemon reaches a repository in a bucket (`repo` s3://BUCKET[/PREFIX]): its client's access, for this attach only, never logged. */
  s3?: S3Access;
}

/** A bucket's endpoint and the credentials a client resolved, handed to the daemon for one attach. */
export interface S3Access {
  /** http(s)://HOST[:PORT]; none: AWS's endpoint of `region`. */
  endpoint?: string;
  region: string;
  pathStyle: boolean;
  /** A CA to trust besides the system's, PEM text. */
  ca?: string;
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface SnapshotCreateParams {
  /** Devices (names or paths); more may be added with snapshot.add until the take. */
  devices: string[];
  /** Difference storage: a regular file, a directory (an unnamed file is made there) or a block device. */
  diffStorage: string;
  /** Largest size of the difference storage, bytes. */
  limit: number;
  /** Growth step of a file difference storage, bytes (default 1 GiB). */
  diffStorageMinimum?: number;
  /** Smallest chunk shift, 12 to 26 (default 18: 256 KiB chunks). */
  chunkMinimumShift?: number;
  /** Chunks copied at once per device, at most (default 256). */
  chunkMaximumInQueue?: number;
  /** Destroyed when the control connection that created it closes (a backup's snapshot never outlives it). */
  ownedByConnection?: boolean;
  /** A regular file that holds data may be overwritten; without it such a file is refused (EEXIST). */
  force?: boolean;
}

export interface SnapshotIdParams {
  id: string;
}

export interface ImageInfo {
  /** Export name of the image. */
  name: string;
  /** NBD URI of the image. */
  uri: string;
  blockDevice?: string;
}

export interface SnapshotInfo {
  /** The snapshot the device belongs to, or null. */
  id: string | null;
  /** 0, or the negative errno that corrupted the snapshot (-28, ENOSPC, after an overflow). */
  errorCode: number;
  /** The device's image once the snapshot is taken, else null. */
  image: ImageInfo | null;
  /** The snapshot's difference storage: bytes holding originals now, the most they have been, and the limit. */
  diffStorage?: { usedBytes: number; peakBytes: number; limitBytes: number };
}

export interface SnapshotEventResult {
  code: 'corrupted' | 'no_space' | 'low_space' | 'timeout';
  /** Milliseconds since the epoch. */
  time: number;
  /** corrupted: {device, errorCode}; no_space: {requestedSectors}; low_space: {usedSectors, limitSectors}; timeout: {}. */
  data: Record<string, string | number>;
}

export const SnapshotCreate = method<SnapshotCreateParams, { id: string }>('snapshot.create', true);
export const BackupAttach = method<BackupAttachParams, DeviceInfo>('backup.attach', true);
export const SnapshotAdd = method<SnapshotIdParams & DeviceParams, Record<string, never>>('snapshot.add', true);
export const SnapshotTake = method<SnapshotIdParams, { id: string; warnings: string[] }>('snapshot.take', true);
export const SnapshotCollect = method<Record<string, never>, { ids: string[] }>('snapshot.collect');
export const SnapshotGetInfo = method<DeviceParams, SnapshotInfo>('snapshot.info');
export const SnapshotWaitEvent = method<SnapshotIdParams & { timeoutMs: number }, SnapshotEventResult>('snapshot.waitEvent');
export const SnapshotDestroy = method<SnapshotIdParams, Record<string, never>>('snapshot.destroy', true);
