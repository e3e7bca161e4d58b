// Owns what blksnap's scenario tests share: the duration knob, a daemon with devices, snapshot calls.
import * as path from 'node:path';
import { BlksnapClient } from '../../src/client/connection.js';
import * as api from '../../src/control/protocol.js';
import { TestDaemon } from './daemon.js';
import { sparseFile, tempDir } from './tools.js';

/**
 * How long each scenario's write rounds run: BLKSNAP_TEST_DURATION seconds, or "long" (2 minutes).
 * The default keeps `npm test` short; the algorithms are the same either way.
 */
export function durationMs(defaultSeconds = 2): number {
  const v = process.env.BLKSNAP_TEST_DURATION;
  if (v === 'long') return 120_000;
  const n = Number(v);
  return Number.isFinite(n) && n > 0 ? n * 1000 : defaultSeconds * 1000;
}

export class Scenario {
  readonly daemon: TestDaemon;
  readonly client: BlksnapClient;
  readonly dir: string;
  #removeDir: () => void;

  private constructor(daemon: TestDaemon, client: BlksnapClient, dir: string, removeDir: () => void) {
    this.daemon = daemon;
    this.client = client;
    this.dir = dir;
    this.#removeDir = removeDir;
  }

  /** A daemon with sparse devices of the given sizes attached as dev0, dev1, ... */
  static async start(deviceSizes: number[], daemonArgs: string[] = []): Promise<Scenario> {
    const { dir, remove } = tempDir('blksnap-scenario-');
    try {
      const args = deviceSizes.flatMap((size, i) => ['--attach', `${sparseFile(path.join(dir, `dev${i}`), size)}=dev${i}`]);
      const daemon = await TestDaemon.start([...args, ...daemonArgs]);
      try {
        const client = await BlksnapClient.connect(daemon.controlPath);
        return new Scenario(daemon, client, dir, remove);
      } catch (e) {
        await daemon.stop();
        throw e;
      }
    } catch (e) {
      remove(); // a daemon that did not come up leaves nothing behind
      throw e;
    }
  }

  path(name: string): string {
    return path.join(this.dir, name);
  }

  /** Creates and takes a snapshot; returns its id. */
  async take(devices: string[], options: Partial<api.SnapshotCreateParams> = {}): Promise<string> {
    const { id } = await this.client.call(api.SnapshotCreate, { devices, diffStorage: this.dir, limit: 1 << 30, ...options });
    await this.client.call(api.SnapshotTake, { id });
    return id;
  }

  async imageName(device: string): Promise<string> {
    const info = await this.client.call(api.SnapshotGetInfo, { device });
    if (!info.image) throw new Error(`${device} has no image`);
    return info.image.name;
  }

  destroy(id: string): Promise<Record<string, never>> {
    return this.client.call(api.SnapshotDestroy, { id });
  }

  async stop(): Promise<void> {
    await this.client.close();
    await this.daemon.stop();
    this.#removeDir();
  }
}

/** A deterministic pseudo-random generator (mulberry32), so a failing run can be repeated by its seed. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
