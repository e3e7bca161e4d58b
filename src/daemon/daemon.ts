// Owns a running daemon: the registry, the NBD and control servers, start-up attaches and orderly shutdown.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ControlServer } from '../control/server.js';
import { dispatch, type DaemonContext } from '../control/handlers.js';
import { DeviceAttach } from '../control/protocol.js';
import { Registry } from '../core/registry.js';
import { NbdServer } from '../frontends/nbd/server.js';
import type { DaemonConfig } from './config.js';
import type { Log } from './log.js';
import { BlkError } from '../errors.js';

export class Daemon {
  readonly registry = new Registry();
  readonly config: DaemonConfig;
  readonly nbd: NbdServer;
  readonly control: ControlServer;
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
      socketPath: config.nbdPath,
      log,
      ...(config.listen === undefined ? {} : { listen: config.listen }),
    });
    this.context = {
      registry: this.registry,
      exportUri: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${config.nbdPath}`,
      takeSnapshot: async (snapshot) => {
        await snapshot.take((device) => `${device.name}-image`);
        return [];
      },
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
    await this.nbd.start();
    await this.control.start();
    for (const a of this.config.attach) {
      await dispatch(DeviceAttach.name, { path: a.path, ...(a.name ? { name: a.name } : {}) }, this.context);
    }
    const tcp = this.nbd.tcpPort === undefined ? '' : `, nbd tcp port ${this.nbd.tcpPort}`;
    this.#log(`ready: control ${this.config.controlPath}, nbd ${this.config.nbdPath}${tcp}`);
  }

  async stop(): Promise<void> {
    await this.control.close();
    await this.nbd.close();
    for (const snapshot of this.registry.snapshots()) await this.registry.destroySnapshot(snapshot);
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
