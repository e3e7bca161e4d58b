// Owns the daemon's life-cycle operations in one place: attach and detach (with kernel block devices),
// create, take (freeze, switch, images, their block devices, rollback), destroy, and the CBT switch.
import { FileStorage, type FileStorageOptions } from '../backing/file-storage.js';
import * as api from '../control/protocol.js';
import type { Caller, ControlService, DirtyRanges } from '../control/service.js';
import { BackupStorage, bucketRepository } from '../backup/backup-storage.js';
import type { WorkerPool } from '../backup/workers/worker-pool.js';
import type { Device } from '../core/device.js';
import { holdAll } from '../core/hold.js';
import { defaultDeviceName, imageName, type Registry } from '../core/registry.js';
import type { Snapshot } from '../core/snapshot.js';
import { BlkError, toBlkError } from '../errors.js';
import { fileExtentsOn, freezeMountPoint } from '../os/async-fs.js';
import type { Hooks } from './hooks.js';
import type { LoopDevices } from './loop-devices.js';
import { storeInUse, type OwnPaths } from './own-paths.js';
import type { DeviceState } from './device-state.js';
import type { CbtKeeper } from '../cbt/cbt-keeper.js';
import * as fs from 'node:fs';
import { VERSION } from '../version.js';
import * as path from 'node:path';


export interface ServiceOptions {
  registry: Registry;
  loopDevices: LoopDevices;
  ownPaths: OwnPaths;
  /** NBD URI of an export on the daemon's Unix socket. */
  exportUri(name: string): string;
  /** Options every attached store gets. */
  storageOptions: FileStorageOptions;
  /** Copy-on-write copies bypass the page cache (blksnapd --cow-copy direct). */
  isCowCopyDirect: boolean;
  /** The application-consistency hooks run around each take. */
  hooks: Hooks;
  /** Share of a difference storage's limit past which its snapshot gets a low_space event. */
  lowSpaceShare: number;
  /** Every attached device gets a kernel block device (blksnapd --loop). */
  isLoopForAll: boolean;
  /** Where attached devices are kept across restarts. */
  state: DeviceState;
  /** Keeps each tracker durable across restarts and crashes. */
  keeper: CbtKeeper;
  /** Worker threads that load backup chunks (made at the first backup_attach). */
  backupWorkers: () => WorkerPool<'attach'>;
  /** Bytes of backup chunks kept in memory per attached backup. */
  backupCacheBytes: number;
  /** Where the overlays of writable backup attaches live (unnamed files). */
  overlayDir: string;
  log(line: string): void;
}

/**
 * blksnap's ioctls, as one object: the control handlers and the daemon's own start-up call it; the
 * core (registry, snapshot, tracker) and the kernel block devices are reached only from here.
 */
export class BlksnapService implements ControlService {
  #o: ServiceOptions;

  constructor(options: ServiceOptions) {
    this.#o = options;
  }

  version(): api.VersionResult {
    return { version: VERSION, protocol: api.CONTROL_PROTOCOL_VERSION };
  }

  /** Opens the store (refused when it lies on one of our own devices), attaches it, gives it a block device if asked. */
  async attach(p: api.AttachParams): Promise<api.DeviceInfo> {
    const device = await this.#serially(() => this.#attach(p, false));
    await this.#saveAttached();
    return this.#deviceInfo(device);
  }

  /** Attach and detach one at a time: a tracker's files are named after the device. */
  #serially<T>(run: () => Promise<T>): Promise<T> {
    const result = this.#lifeCycle.then(run, run);
    this.#lifeCycle = result.catch(() => undefined);
    return result;
  }

  #lifeCycle: Promise<unknown> = Promise.resolve();
  /** Devices that are backups served again: never attached again at start. */
  #backupDevices = new Set<string>();

  /** Serves a device of a backup as a device: read-only, or with a throw-away overlay (--writable). */
  async attachBackup(p: api.BackupAttachParams): Promise<api.DeviceInfo> {
    const { registry, loopDevices, log } = this.#o;
    const device = await this.#serially(async () => {
      const name = p.name ?? defaultDeviceName(`${p.device}.${p.id}`);
      registry.checkNewName(name);
      // A repository on one of our own devices would be read through this very event loop; one in a
      // bucket is reached with its client's access, for this attach only.
      const s3 = p.s3;
      if (!s3) await this.#o.ownPaths.refuseOwn(p.repo, 'repository');
      else if (!p.repo.startsWith('s3://')) throw new BlkError('EINVAL', `backup.attach: s3 access goes with an s3:// repository, not '${p.repo}'`);
      const repo = s3 ? bucketRepository(p.repo, s3, path.join(this.#o.overlayDir, 'cache')) : path.resolve(p.repo);
      const storage = await BackupStorage.open(repo, p.id, p.device, {
        ...(p.secret === undefined ? {} : { secret: Buffer.from(p.secret, 'base64') }),
        workers: this.#o.backupWorkers(),
        cacheBytes: this.#o.backupCacheBytes,
        ...(p.writable ? { overlayDir: this.#o.overlayDir } : {}),
      });
      const attached = await registry.attach(storage, { name, tracking: false });
      this.#backupDevices.add(name);
      log(`attached backup ${p.id} of ${p.device} in ${p.repo} as ${name} (${attached.size} bytes, ${p.writable ? 'writable: a throw-away overlay' : 'read-only'})`);
      if (p.loop ?? this.#o.isLoopForAll) {
        try {
          await loopDevices.expose(name);
        } catch (e) {
          await registry.detach(attached);
          this.#backupDevices.delete(name);
          throw e;
        }
      }
      return attached;
    });
    return this.#deviceInfo(device);
  }

  /** `restore`: the tracker comes from the state directory (at start), else it is new. */
  async #attach(p: api.AttachParams, restore: boolean): Promise<Device> {
    const { registry, loopDevices, keeper, log } = this.#o;
    await this.#o.ownPaths.refuseOwn(p.path, 'store');
    const readOnly = p.readOnly ?? false;
    const tracking = p.tracking ?? true;
    const name = p.name ?? defaultDeviceName(p.path);
    registry.checkNewName(name); // before the tracker's files of that name are touched
    const storage = await FileStorage.open(p.path, { readOnly, ...this.#o.storageOptions });
    let kept: Awaited<ReturnType<CbtKeeper['open']>> | null = null;
    let device: Device;
    try {
      if (tracking) kept = await keeper.open(name, p.path, storage.size, restore);
    } catch (e) {
      await storage.close();
      throw e;
    }
    try {
      device = await registry.attach(storage, { ...(kept?.tracker ?? {}), tracking, name });
    } catch (e) {
      if (kept) await keeper.abandon(kept);
      throw e;
    }
    if (kept) keeper.keep(device, kept);
    const origin = device.tracker.origin;
    const cbt = !tracking ? '' : origin.kind === 'restored' ? '; CBT restored' : `; CBT ${origin.kind}: ${origin.reason}`;
    log(`attached ${device.path} as ${device.name} (${device.size} bytes${readOnly ? ', read-only' : ''}${tracking ? '' : ', untracked'}${cbt})`);
    if (p.loop ?? this.#o.isLoopForAll) {
      try {
        await loopDevices.expose(device.name);
      } catch (e) {
        await registry.detach(device);
        await keeper.forget(device.name);
        throw e;
      }
    }
    return device;
  }

  /**
   * At start: attaches again what the state says was attached, each with its tracker as the state
   * directory has it (restored, recovered, or new with the reason). A store that is gone is logged
   * and left out.
   */
  async restoreAttached(): Promise<void> {
    const { state, log } = this.#o;
    const { records, reason } = await state.loadAttached();
    if (reason && !reason.includes('ENOENT')) log(`no devices restored: ${reason}`);
    for (const r of records) {
      try {
        await fs.promises.stat(r.path);
      } catch (e) {
        log(`not attaching ${r.name} again: its store ${r.path} is gone (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
        continue;
      }
      try {
        await this.#serially(() => this.#attach({ path: r.path, name: r.name, readOnly: r.readOnly, tracking: r.tracking, loop: r.loop }, true));
      } catch (e) {
        log(`cannot attach ${r.name} again: ${toBlkError(e).toString()}`);
      }
    }
    await this.#saveAttached();
  }

  /** At a clean stop, after the devices' last writes: every tracker saved as clean. */
  async saveTrackers(devices: readonly Device[]): Promise<void> {
    for (const d of devices) await this.#o.keeper.stop(d);
  }

  async #saveAttached(): Promise<void> {
    const { registry, loopDevices } = this.#o;
    await this.#o.state.saveAttached(
      registry.devices().filter((d) => !this.#backupDevices.has(d.name)).map((d) => ({ path: path.resolve(d.path), name: d.name, readOnly: d.isReadOnly, tracking: d.tracker.isTracking, loop: loopDevices.get(d.name) !== undefined })),
    );
  }

  async detach(name: string): Promise<void> {
    const { registry, loopDevices, log } = this.#o;
    const device = await registry.find(name);
    registry.checkDetachable(device); // before its block device goes away
    const mounted = loopDevices.mountPoints(device.name);
    if (mounted.length) throw new BlkError('EBUSY', `device ${device.name} is mounted on ${mounted.join(', ')}; unmount it first`);
    await this.#serially(async () => {
      await loopDevices.release(device.name);
      await registry.detach(device);
      // Detach ends tracking: nothing of it comes back at the next start.
      if (!this.#backupDevices.delete(device.name)) await this.#o.keeper.forget(device.name);
    });
    await this.#saveAttached();
    log(`detached ${device.name}`);
  }

  list(): api.DeviceInfo[] {
    return this.#o.registry.devices().map((d) => this.#deviceInfo(d));
  }

  async deviceInfo(name: string): Promise<api.DeviceInfo> {
    return this.#deviceInfo(await this.#o.registry.find(name));
  }

  async resolvePath(p: string): Promise<api.ResolveResult> {
    const what = await this.#o.ownPaths.classify(p);
    if (what.kind === 'store') return { device: this.#deviceInfo(await this.#o.registry.find(what.device)), refusal: null };
    return { device: null, refusal: what.kind === 'refused' ? what.why : null };
  }

  async cbtInfo(name: string): Promise<api.CbtInfo> {
    return cbtInfo(await this.#o.registry.find(name));
  }

  async readCbt(name: string, firstBlock: number, blockCount: number): Promise<api.CbtReadResult> {
    const cbt = (await this.#o.registry.find(name)).tracker.cbt;
    if (firstBlock > cbt.blockCount) throw new BlkError('EINVAL', `cbt.read: offset ${firstBlock} is past the map's ${cbt.blockCount} blocks`);
    return { offset: firstBlock, data: Buffer.from(cbt.readMap(firstBlock, blockCount)).toString('base64') };
  }

  async markDirty(name: string, what: DirtyRanges): Promise<void> {
    const device = await this.#o.registry.find(name);
    if ('ranges' in what) return device.markDirty(what.ranges);
    const blockDevice = this.#o.loopDevices.get(device.name);
    if (!blockDevice) throw new BlkError('EINVAL', `device ${device.name} has no block device (attach it with --loop) to hold ${what.file}`);
    // The file lies on this daemon's own device by design: os/async-fs.ts keeps it off the event loop.
    await device.markDirty(await fileExtentsOn(what.file, blockDevice));
  }

  /** The take's CBT step alone: hold, flush, switch, release. */
  async switchCbt(name: string): Promise<api.CbtInfo> {
    const device = await this.#o.registry.find(name);
    const release = await holdAll([device.tracker]);
    try {
      await device.storage.flush();
      device.tracker.switchCbt();
    } finally {
      release();
    }
    await this.#o.keeper.saveNow(device); // the switch is durable before the answer
    return cbtInfo(device);
  }

  async createSnapshot(p: api.SnapshotCreateParams, caller: Caller): Promise<{ id: string }> {
    const { registry, log } = this.#o;
    const devices = await Promise.all(p.devices.map((n) => registry.find(n)));
    if (new Set(devices).size !== devices.length) throw new BlkError('EINVAL', 'snapshot.create: a device is listed twice');
    await this.#o.ownPaths.refuseOwn(p.diffStorage, 'difference storage', (name, what) =>
      devices.some((d) => d.name === name) ? new BlkError('EINVAL', `${what} is a device of this snapshot (${name})`) : storeInUse(name, what),
    );
    const snapshot = await registry.createSnapshot(devices, {
      diffStorage: p.diffStorage,
      limit: p.limit,
      isCowCopyDirect: this.#o.isCowCopyDirect,
      lowSpaceShare: this.#o.lowSpaceShare,
      ...(p.force ? { force: true } : {}),
      ...(p.diffStorageMinimum === undefined ? {} : { diffStorageMinimum: p.diffStorageMinimum }),
      ...(p.chunkMinimumShift === undefined ? {} : { chunkMinimumShift: p.chunkMinimumShift }),
      ...(p.chunkMaximumInQueue === undefined ? {} : { chunkMaximumInQueue: p.chunkMaximumInQueue }),
    });
    log(`snapshot ${snapshot.id} created: ${devices.map((d) => d.name).join(', ')}; difference storage ${p.diffStorage} (${snapshot.diffStorage?.kind}${snapshot.diffStorage?.isCopyDirect ? ', copies by O_DIRECT' : ''}), limit ${p.limit}`);
    snapshot.events.onPush((e) => log(`snapshot ${snapshot.id}: ${e.code} ${JSON.stringify(e.data)}`));
    if (p.ownedByConnection) caller.onClose(() => void this.#destroyOrphan(snapshot));
    return { id: snapshot.id };
  }

  async addToSnapshot(id: string, name: string): Promise<void> {
    this.#o.registry.snapshot(id).add(await this.#o.registry.find(name));
  }

  /**
   * The whole take: filesystems mounted from the devices' block devices are frozen across it (off
   * the event loop: the freeze's write-back comes through this daemon), so the images are
   * filesystem-consistent; a failed freeze is a warning, not a failure. The core take holds,
   * switches and publishes the images or leaves no trace. Then devices with a block device get
   * one for their image too.
   */
  async takeSnapshot(id: string): Promise<{ id: string; warnings: string[] }> {
    const { registry, loopDevices, log } = this.#o;
    const snapshot = registry.snapshot(id);
    const started = process.hrtime.bigint();
    const warnings: string[] = [];
    const thaws: Array<{ thaw: () => Promise<void>; mountPoint: string }> = [];
    const freeze = async (): Promise<void> => {
      for (const device of snapshot.devices) {
        for (const mountPoint of loopDevices.mountPoints(device.name)) {
          try {
            thaws.push({ thaw: await freezeMountPoint(mountPoint), mountPoint });
          } catch (e) {
            const warning = `cannot freeze ${mountPoint} of ${device.name}: ${toBlkError(e).toString()}; the image is crash-consistent only`;
            log(warning);
            warnings.push(warning);
          }
        }
      }
    };
    // The hooks first (an application makes its data consistent on disk), the filesystems' freeze
    // inside the take; thawed in the reverse order, whatever happens.
    const context = { snapshotId: snapshot.id, devices: snapshot.devices.map((d) => d.name), blockDevices: snapshot.devices.flatMap((d) => loopDevices.get(d.name) ?? []) };
    const frozen = await this.#o.hooks.freeze(context);
    try {
      await snapshot.take((device) => imageName(device.name), freeze);
    } finally {
      for (const { thaw, mountPoint } of thaws) await thaw().catch((e: unknown) => log(`cannot thaw ${mountPoint}: ${String(e)}`));
      await this.#o.hooks.thaw(frozen, context);
    }
    // The CBT switch is durable before snapshot_take answers; the devices' files are
    // their own, so their saves (each ending in fsyncs) run at once.
    await Promise.all(
      snapshot.devices.map((device) =>
        this.#o.keeper.saveNow(device).catch((e: unknown) => {
          warnings.push(`the CBT switch of ${device.name} could not be saved (${toBlkError(e).toString()}): after a crash it gets a new generation`);
        }),
      ),
    );
    for (const device of snapshot.devices) {
      const image = snapshot.image(device);
      if (!image || !loopDevices.get(device.name)) continue;
      try {
        await loopDevices.expose(image.name);
      } catch (e) {
        const warning = `image ${image.name} has no block device: ${toBlkError(e).toString()}`;
        log(warning);
        warnings.push(warning);
      }
    }
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    log(`snapshot ${snapshot.id} taken in ${ms.toFixed(1)} ms${warnings.length ? `; ${warnings.join('; ')}` : ''}`);
    return { id: snapshot.id, warnings };
  }

  snapshotIds(): string[] {
    return this.#o.registry.snapshots().map((s) => s.id);
  }

  async snapshotInfo(name: string): Promise<api.SnapshotInfo> {
    const device = await this.#o.registry.find(name);
    const id = device.tracker.snapshotId;
    if (id === null) return { id: null, errorCode: 0, image: null };
    const snapshot = this.#o.registry.snapshot(id);
    const image = snapshot.image(device);
    const blockDevice = image ? this.#o.loopDevices.get(image.name) : undefined;
    return {
      id,
      errorCode: snapshot.error ? -snapshot.error.errno : 0,
      image: image ? { name: image.name, uri: this.#o.exportUri(image.name), ...(blockDevice ? { blockDevice } : {}) } : null,
      ...(snapshot.diffStorage ? { diffStorage: { usedBytes: snapshot.diffStorage.used, peakBytes: snapshot.diffStorage.peak, limitBytes: snapshot.diffStorage.limit } } : {}),
    };
  }

  async waitEvent(id: string, timeoutMs: number): Promise<api.SnapshotEventResult> {
    const event = await this.#o.registry.snapshot(id).waitEvent(timeoutMs);
    if (!event) return { code: 'timeout', time: Date.now(), data: {} };
    return { code: event.code, time: event.time, data: { ...event.data } };
  }

  /** Images' block devices first, then the snapshot (copy-on-write stops, images close, store closes). */
  async destroySnapshot(id: string): Promise<void> {
    await this.#destroy(this.#o.registry.snapshot(id));
    this.#o.log(`snapshot ${id} destroyed`);
  }

  /** A snapshot whose owning control connection closed (its backup ended, or died): destroyed, after a take under way. */
  async #destroyOrphan(snapshot: Snapshot): Promise<void> {
    while (snapshot.phase === 'taking') await new Promise((r) => setTimeout(r, 50));
    if (snapshot.phase === 'destroyed' || !this.#o.registry.snapshots().includes(snapshot)) return;
    try {
      await this.#destroy(snapshot);
      this.#o.log(`snapshot ${snapshot.id} destroyed: the connection that owned it closed`);
    } catch (e) {
      this.#o.log(`cannot destroy snapshot ${snapshot.id} of a closed connection: ${toBlkError(e).toString()}`);
    }
  }

  /** Destroys every snapshot (daemon stop); failures are logged, the rest go on. */
  async destroyAll(): Promise<void> {
    for (const snapshot of this.#o.registry.snapshots()) await this.#destroy(snapshot).catch((e: unknown) => this.#o.log(String(e)));
  }

  async #destroy(snapshot: Snapshot): Promise<void> {
    if (snapshot.phase === 'taking') throw new BlkError('EBUSY', `snapshot ${snapshot.id} is being taken`);
    for (const device of snapshot.devices) {
      const image = snapshot.image(device);
      if (image) await this.#o.loopDevices.release(image.name);
    }
    await this.#o.registry.destroySnapshot(snapshot);
  }

  #deviceInfo(device: Device): api.DeviceInfo {
    const blockDevice = this.#o.loopDevices.get(device.name);
    return {
      name: device.name,
      path: device.path,
      size: device.size,
      uri: this.#o.exportUri(device.name),
      ...(blockDevice ? { blockDevice } : {}),
      readOnly: device.isReadOnly,
      tracking: device.tracker.isTracking,
    };
  }
}

function cbtInfo(device: Device): api.CbtInfo {
  const cbt = device.tracker.cbt;
  const origin = device.tracker.origin;
  return {
    deviceCapacity: cbt.capacity,
    blockSize: cbt.blockSize,
    blockCount: cbt.blockCount,
    generationId: cbt.generationId,
    changesNumber: cbt.previousNumber,
    origin: origin.kind,
    ...(origin.kind === 'restored' ? {} : { originReason: origin.reason }),
  };
}
