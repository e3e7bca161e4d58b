// Owns a running daemon: the registry, the NBD and control servers, kernel block devices, start-up and shutdown.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ControlServer } from '../control/server.js';
import { dispatch, type DaemonContext } from '../control/handlers.js';
import { DeviceAttach } from '../control/protocol.js';
import { imageName, Registry } from '../core/registry.js';
import type { Snapshot } from '../core/snapshot.js';
import { BlkError, toBlkError } from '../errors.js';
import { NbdServer } from '../frontends/nbd/server.js';
import { TlsServer } from '../frontends/nbd/tls.js';
import { freezeMountPoint } from '../os/async-fs.js';
import { OwnPaths } from './own-paths.js';
import { deviceNumberText } from '../os/block-identity.js';
import { LoopDevices } from './loop-devices.js';
import type { DaemonConfig } from './config.js';
import type { Log } from './log.js';

export class Daemon {
  readonly registry = new Registry();
  readonly config: DaemonConfig;
  readonly nbd: NbdServer;
  readonly control: ControlServer;
  readonly loopDevices: LoopDevices;
  readonly context: DaemonContext;
  #log: Log;
  #pidFile: string;
  #hasPidFile = false;

  constructor(config: DaemonConfig, log: Log) {
    this.config = config;
    this.#log = log;
    this.#pidFile = path.join(config.stateDir, 'blksnapd.pid');
    this.nbd = new NbdServer({
      catalogue: this.registry,
      tls: config.tls === null ? null : new TlsServer(config.tls),
      maximumConnections: config.maximumConnections,
      handshakeTimeoutMs: config.handshakeTimeoutMs,
      socketPath: config.nbdPath,
      sendFileMinimum: config.sendFileMinimum,
      log,
      ...(config.listen === undefined ? {} : { listen: config.listen }),
    });
    this.loopDevices = new LoopDevices({
      stateDir: config.stateDir,
      nbdSocket: config.nbdPath,
      route: config.loopRoute,
      lookupExport: (name) => this.registry.lookupExport(name),
      log,
    });
    const ownPaths = new OwnPaths({
      stores: () => this.registry.devices().flatMap((d) => {
        const id = d.storage.identity?.();
        return id ? [{ device: d.name, dev: id.dev, ino: id.ino, blockDevice: id.rdev ? deviceNumberText(id.rdev) : null }] : [];
      }),
      loopDevices: () => this.loopDevices.kernelDevices(),
    });
    this.context = {
      registry: this.registry,
      refuseOwnPath: async (p, purpose, sameStore) => void (await ownPaths.refuseOwn(p, purpose, sameStore)),
      exportUri: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${config.nbdPath}`,
      takeSnapshot: (snapshot) => this.takeSnapshot(snapshot),
      destroySnapshot: (snapshot) => this.destroySnapshot(snapshot),
      loopDevices: this.loopDevices,
      isLoopForAll: config.loopAll,
      storageOptions: { cachedReadMaximum: config.cachedReadMaximum, syncWriteMaximum: config.syncWriteMaximum },
      log,
    };
    this.control = new ControlServer(config.controlPath, this.context);
  }

  async start(): Promise<void> {
    for (const dir of [this.config.stateDir, path.dirname(this.config.controlPath), path.dirname(this.config.nbdPath)]) {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    }
    this.#claimPidFile();
    await this.loopDevices.cleanLeftovers();
    await this.nbd.start();
    await this.control.start();
    for (const a of this.config.attach) {
      await dispatch(DeviceAttach.name, { path: a.path, ...(a.name ? { name: a.name } : {}) }, this.context);
    }
    const tls = this.config.tls === null ? ' in the clear (--tls off)' : ' with TLS';
    const tcp = this.nbd.tcpPort === undefined ? '' : `, nbd tcp port ${this.nbd.tcpPort}${tls}`;
    this.#log(`ready: control ${this.config.controlPath}, nbd ${this.config.nbdPath}${tcp}`);
  }

  /**
   * A take the daemon's way: filesystems mounted from the devices' block devices are frozen
   * across the take (off the event loop: the freeze's write-back comes through this daemon), so
   * the images are filesystem-consistent; a failed freeze is a warning, not a failure. After the
   * take, devices with a block device get one for their image too.
   */
  async takeSnapshot(snapshot: Snapshot): Promise<string[]> {
    const warnings: string[] = [];
    const thaws: Array<{ thaw: () => Promise<void>; mountPoint: string }> = [];
    for (const device of snapshot.devices) {
      for (const mountPoint of this.loopDevices.mountPoints(device.name)) {
        try {
          thaws.push({ thaw: await freezeMountPoint(mountPoint), mountPoint });
        } catch (e) {
          const warning = `cannot freeze ${mountPoint} of ${device.name}: ${toBlkError(e).toString()}; the image is crash-consistent only`;
          this.#log(warning);
          warnings.push(warning);
        }
      }
    }
    try {
      await snapshot.take((device) => imageName(device.name));
    } finally {
      for (const { thaw, mountPoint } of thaws) await thaw().catch((e: unknown) => this.#log(`cannot thaw ${mountPoint}: ${String(e)}`));
    }
    for (const device of snapshot.devices) {
      const image = snapshot.image(device);
      if (!image || !this.loopDevices.get(device.name)) continue;
      try {
        await this.loopDevices.expose(image.name);
      } catch (e) {
        const warning = `image ${image.name} has no block device: ${toBlkError(e).toString()}`;
        this.#log(warning);
        warnings.push(warning);
      }
    }
    return warnings;
  }

  async destroySnapshot(snapshot: Snapshot): Promise<void> {
    if (snapshot.phase === 'taking') throw new BlkError('EBUSY', `snapshot ${snapshot.id} is being taken`);
    for (const device of snapshot.devices) {
      const image = snapshot.image(device);
      if (image) await this.loopDevices.release(image.name);
    }
    await this.registry.destroySnapshot(snapshot);
  }

  async stop(): Promise<void> {
    await this.control.close();
    for (const snapshot of this.registry.snapshots()) await this.destroySnapshot(snapshot).catch((e: unknown) => this.#log(String(e)));
    await this.loopDevices.releaseAll();
    await this.nbd.close();
    for (const device of this.registry.devices()) await this.registry.detach(device);
    if (this.#hasPidFile) fs.rmSync(this.#pidFile, { force: true });
    this.#log('stopped');
  }

  /** One daemon per state directory: a pid file naming a live process refuses a second one. */
  #claimPidFile(): void {
    try {
      const pid = Number(fs.readFileSync(this.#pidFile, 'utf8').trim());
      if (pid > 0 && pid !== process.pid) {
        try {
          process.kill(pid, 0);
          throw new BlkError('EBUSY', `another blksnapd (pid ${pid}) uses state directory ${this.config.stateDir}`);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
          this.#log(`removing stale pid file of pid ${pid}`);
        }
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    fs.writeFileSync(this.#pidFile, `${process.pid}\n`);
    this.#hasPidFile = true;
  }
}
