// Owns a running daemon: the registry, the NBD and control servers, kernel block devices, start-up and shutdown.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ControlServer } from '../control/server.js';
import { controlHandlers } from '../control/handlers.js';
import { Registry } from '../core/registry.js';
import { BlkError } from '../errors.js';
import { NbdServer, parseListenAddress } from '../frontends/nbd/server.js';
import { TlsServer } from '../frontends/nbd/tls.js';
import { deviceNumberText } from '../os/block-identity.js';
import type { DaemonConfig } from './config.js';
import type { Log } from './log.js';
import { LoopDevices } from './loop-devices.js';
import { OwnPaths } from './own-paths.js';
import { BlksnapService } from './service.js';
import { DeviceState } from './device-state.js';
import { CbtKeeper } from '../cbt/cbt-keeper.js';
import { Metrics } from './metrics.js';
import { WorkerPool } from '../backup/workers/worker-pool.js';
import { backup as backupParams } from '../params.js';
import { isProcessRunning } from '../os/process-alive.js';
import { groupId } from '../os/credentials.js';
import { ensurePrivateDirectory, readOwnFile, writeOwnFile } from '../os/private-dir.js';
import { Hooks } from './hooks.js';
import { sdNotify, watchdogIntervalMs } from '../os/sd-notify.js';

export class Daemon {
  readonly registry = new Registry();
  readonly config: DaemonConfig;
  readonly nbd: NbdServer;
  readonly control: ControlServer;
  readonly loopDevices: LoopDevices;
  readonly service: BlksnapService;
  #log: Log;
  #pidFile: string;
  #hasPidFile = false;
  #backupWorkers: WorkerPool<'attach'> | undefined;
  #watchdog: NodeJS.Timeout | undefined;
  #tls: TlsServer | null;
  #controlGroup: number | null;

  /** The Prometheus endpoint, with --metrics. */
  readonly metrics: Metrics | null;

  constructor(config: DaemonConfig, log: Log) {
    this.config = config;
    this.#log = log;
    this.metrics = config.metrics === undefined ? null : new Metrics({ devices: this.registry, nbdConnections: () => this.nbd.connectionCount, blockDevices: () => this.loopDevices.kernelDevices().length });
    const metrics = this.metrics;
    this.#pidFile = path.join(config.stateDir, 'blksnapd.pid');
    this.#tls = config.tls === null ? null : new TlsServer(config.tls);
    this.nbd = new NbdServer({
      catalogue: this.registry,
      tls: this.#tls,
      maximumConnections: config.maximumConnections,
      idleTimeoutMs: config.idleTimeoutMs,
      handshakeTimeoutMs: config.handshakeTimeoutMs,
      isVerbose: config.isVerbose,
      ...(metrics ? { observers: (name: string) => metrics.observer(name) } : {}),
      socketPath: config.nbdPath,
      sendFileMinimum: config.sendFileMinimum,
      busyPollMicroseconds: config.busyPollMicroseconds,
      log,
      ...(config.listen === undefined ? {} : { listen: config.listen }),
    });
    this.loopDevices = new LoopDevices({
      stateDir: config.stateDir,
      nbdSocket: config.nbdPath,
      route: config.loopRoute,
      fuseIoUring: config.fuseIoUring,
      lookupExport: (name) => this.registry.lookupExport(name),
      log,
    });
    const ownPaths = new OwnPaths({
      stores: () => this.registry.devices().flatMap((d) => {
        const id = d.storage.identity();
        return id ? [{ device: d.name, dev: id.dev, ino: id.ino, blockDevice: id.rdev ? deviceNumberText(id.rdev) : null }] : [];
      }),
      loopDevices: () => this.loopDevices.kernelDevices(),
    });
    const state = new DeviceState(config.stateDir);
    this.service = new BlksnapService({
      registry: this.registry,
      loopDevices: this.loopDevices,
      ownPaths,
      exportUri: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${config.nbdPath}`,
      storageOptions: { cachedReadMaximum: config.cachedReadMaximum, syncWriteMaximum: config.syncWriteMaximum },
      isCowCopyDirect: config.cowCopy === 'direct',
      lowSpaceShare: config.lowSpaceShare,
      hooks: new Hooks(config.hooksDir, config.hookTimeoutMs, log),
      isLoopForAll: config.loopAll,
      state,
      keeper: new CbtKeeper({ stateDir: config.stateDir, regionSize: config.cbtRegionSize, syncIntervalMs: config.cbtSyncIntervalMs, log }),
      backupWorkers: () => {
        this.#backupWorkers ??= new WorkerPool('attach', backupParams.loadWorkers);
        return this.#backupWorkers;
      },
      backupCacheBytes: backupParams.cacheBytes,
      overlayDir: config.stateDir,
      log,
    });
    const controlGroup = config.controlGroup === null ? null : groupId(config.controlGroup);
    this.#controlGroup = controlGroup;
    this.control = new ControlServer(config.controlPath, controlHandlers(this.service), log, {
      isVerbose: config.isVerbose,
      access: { uid: process.getuid?.() ?? 0, groupId: controlGroup },
    });
  }

  async start(): Promise<void> {
    ensurePrivateDirectory(this.config.stateDir, 'state directory');
    for (const dir of new Set([path.dirname(this.config.controlPath), path.dirname(this.config.nbdPath)])) ensurePrivateDirectory(dir, 'socket directory');
    if (this.#controlGroup !== null) {
      // The group's members reach the control socket through its directory: they may pass, not list or write.
      const dir = path.dirname(this.config.controlPath);
      fs.chownSync(dir, process.getuid?.() ?? 0, this.#controlGroup);
      fs.chmodSync(dir, fs.statSync(dir).mode & 0o7777 | 0o010);
    }
    this.#claimPidFile();
    await this.loopDevices.cleanLeftovers();
    await this.nbd.start();
    await this.control.start();
    await this.service.restoreAttached();
    for (const a of this.config.attach) {
      const again = this.registry.devices().find((d) => d.path === a.path);
      if (again) {
        this.#log(`${a.path} is attached already (as ${again.name}, from the state directory)`);
        continue;
      }
      await this.service.attach({ path: a.path, ...(a.name ? { name: a.name } : {}) });
    }
    if (this.metrics && this.config.metrics !== undefined) {
      const at = await this.metrics.listen(this.config.metrics);
      this.#log(`metrics on http://${at.family === 'IPv6' ? `[${at.address}]` : at.address}:${at.port}/metrics`);
    }
    const unidentified = this.#unidentifiedPeers();
    if (unidentified) this.#log(`warning: ${unidentified}`);
    const tls = this.config.tls === null ? ' in the clear (--tls off)' : ' with TLS';
    const tcp = this.nbd.tcpPort === undefined ? '' : `, nbd tcp port ${this.nbd.tcpPort}${tls}`;
    this.#log(`ready: control ${this.config.controlPath}, nbd ${this.config.nbdPath}${tcp}`);
    // systemd (Type=notify): ready once the sockets answer and the devices are back; the watchdog
    // is fed from this event loop, so a loop that stalls is what the watchdog sees.
    this.#notify(`READY=1\nSTATUS=serving ${this.registry.devices().length} devices`);
    const watchdog = watchdogIntervalMs();
    if (watchdog !== null) {
      this.#watchdog = setInterval(() => this.#notify('WATCHDOG=1'), Math.max(1000, watchdog / 2));
      this.#watchdog.unref();
    }
  }

  /** Tells systemd `state` where it asked to be told; a failure is logged, never fatal. */
  #notify(state: string): void {
    try {
      sdNotify(state);
    } catch (e) {
      this.#log(`cannot notify systemd (${state.split('\n')[0]}): ${(e as Error).message}`);
    }
  }

  async stop(): Promise<void> {
    this.#notify('STOPPING=1');
    if (this.#watchdog) clearInterval(this.#watchdog);
    await this.metrics?.close();
    await this.control.close();
    await this.service.destroyAll();
    await this.loopDevices.releaseAll();
    await this.nbd.close();
    // Detach waits for each device's last write; then the trackers are saved as of a clean stop.
    const devices = this.registry.devices();
    for (const device of devices) await this.registry.detach(device);
    await this.service.saveTrackers(devices);
    await this.#backupWorkers?.close();
    if (this.#hasPidFile) fs.rmSync(this.#pidFile, { force: true });
    this.#log('stopped');
  }

  /** Why anyone who reaches the TCP listener gets every export, when it is reachable from other hosts; null otherwise. */
  #unidentifiedPeers(): string | null {
    if (this.config.listen === undefined) return null;
    const { host } = parseListenAddress(this.config.listen);
    if (host === 'localhost' || /^127\./.test(host) || host === '::1') return null;
    if (this.#tls?.identifiesPeers) return null;
    const how = this.#tls === null ? 'in the clear (--tls off)' : 'with TLS that does not identify clients';
    return `NBD on ${this.config.listen} is served ${how}: any host that reaches the port may read and write every export; use --tls-verify-peer or --tls-psk, and --tls-authz`;
  }

  /** One daemon per state directory: a pid file naming a live process refuses a second one. */
  #claimPidFile(): void {
    try {
      const pid = Number(readOwnFile(this.#pidFile).trim());
      if (pid > 0 && pid !== process.pid) {
        if (isProcessRunning(pid)) throw new BlkError('EBUSY', `another blksnapd (pid ${pid}) uses state directory ${this.config.stateDir}`);
        this.#log(`removing stale pid file of pid ${pid}`);
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    writeOwnFile(this.#pidFile, `${process.pid}\n`, 0o644);
    this.#hasPidFile = true;
  }
}
