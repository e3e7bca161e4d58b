// Owns a backup repository as the library gives it (SPEC §9): init and open, the list of complete
// backups, the lock that keeps a prune's sweep and running backups apart, and the typed entry points
// to create, restore, verify, prune and attach.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BlksnapClient } from '../client/connection.js';
import * as api from '../control/protocol.js';
import { BlkError } from '../errors.js';
import { tryLockAsync } from '../os/libc.js';
import { backup as params } from '../params.js';
import { type CreateOptions, type CreateResult, createBackup } from './backup-create.js';
import { type PruneOptions, type PruneResult, pruneRepository } from './backup-prune.js';
import { type RestoreOptions, type RestoreResult, restoreBackup } from './backup-restore.js';
import { type VerifyOptions, type VerifyResult, verifyRepository } from './backup-verify.js';
import { BACKUP_ID_PATTERN, layout } from './layout.js';
import { type Manifest, readManifest } from './manifest.js';

export interface RepositoryConfig {
  version: 1;
  /** zstd level, or null: chunks are stored as they are. */
  zstdLevel: number | null;
  created: string;
}

export interface BackupSummary {
  id: string;
  time: string;
  devices: Array<{ name: string; size: number; mode: 'full' | 'incremental' }>;
}

/** Parses --compress: zstd, zstd:LEVEL (1-19) or none. */
export function parseCompression(text: string): number | null {
  if (text === 'none') return null;
  const m = /^zstd(?::(\d+))?$/.exec(text);
  const level = m ? Number(m[1] ?? params.zstdLevel) : Number.NaN;
  if (!(level >= 1 && level <= 19)) throw new BlkError('EINVAL', `--compress takes zstd, zstd:LEVEL (1-19) or none, not '${text}'`);
  return level;
}

/**
 * Takes a repository's lock (see Repository.lock), every call off the event loop: the daemon takes
 * it too (backup_attach), and a slow repository must not hold the devices it serves.
 */
export async function lockRepository(dir: string, exclusive: boolean, onWait?: () => void): Promise<() => void> {
  const handle = await fs.promises.open(layout.lock(dir), fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o644);
  try {
    let told = false;
    while (!(await tryLockAsync(handle.fd, exclusive))) {
      if (!told) onWait?.();
      told = true;
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (e) {
    await handle.close();
    throw e;
  }
  return () => void handle.close();
}

export class Repository {
  readonly dir: string;
  readonly config: RepositoryConfig;

  private constructor(dir: string, config: RepositoryConfig) {
    this.dir = dir;
    this.config = config;
  }

  /** Makes a new repository in `dir` (empty or missing); EEXIST when one is there. */
  static async init(dir: string, options: { zstdLevel?: number | null } = {}): Promise<Repository> {
    const root = path.resolve(dir);
    if (fs.existsSync(layout.config(root))) throw new BlkError('EEXIST', `${root} already holds a backup repository`);
    if (fs.existsSync(root) && fs.readdirSync(root).length > 0) throw new BlkError('EEXIST', `${root} is not empty; a repository needs a directory of its own`);
    for (const d of [root, layout.chunksDir(root), layout.pagesDir(root), layout.backupsDir(root)]) fs.mkdirSync(d, { recursive: true });
    const config: RepositoryConfig = { version: 1, zstdLevel: options.zstdLevel === undefined ? params.zstdLevel : options.zstdLevel, created: new Date().toISOString() };
    fs.writeFileSync(layout.lock(root), '');
    fs.writeFileSync(layout.config(root), `${JSON.stringify(config, null, 2)}\n`);
    return new Repository(root, config);
  }

  static async open(dir: string): Promise<Repository> {
    const root = path.resolve(dir);
    let config: RepositoryConfig;
    try {
      config = JSON.parse(fs.readFileSync(layout.config(root), 'utf8')) as RepositoryConfig;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new BlkError(code === 'ENOENT' ? 'ENOENT' : 'EIO', `${root} is not a backup repository (${code === 'ENOENT' ? 'no config.json; make one with backup_init' : 'config.json is not readable JSON'})`);
    }
    if (config.version !== 1) throw new BlkError('EINVAL', `${root} has repository format ${config.version}, not 1`);
    const level = config.zstdLevel;
    if (level !== null && !(Number.isInteger(level) && level >= 1 && level <= 19)) throw new BlkError('EIO', `${root}/config.json: zstdLevel ${JSON.stringify(level)} is not a level from 1 to 19 or null`);
    return new Repository(root, config);
  }

  /** Ids of the complete backups (a manifest in place), oldest first. */
  backupIds(): string[] {
    let names: string[];
    try {
      names = fs.readdirSync(layout.backupsDir(this.dir));
    } catch {
      return [];
    }
    return names.filter((n) => BACKUP_ID_PATTERN.test(n) && fs.existsSync(layout.manifest(this.dir, n))).sort();
  }

  manifest(id: string): Manifest {
    if (!BACKUP_ID_PATTERN.test(id) || !fs.existsSync(layout.manifest(this.dir, id))) throw new BlkError('ENOENT', `no backup ${id} in ${this.dir}`);
    return readManifest(layout.manifest(this.dir, id));
  }

  /** Every complete backup, oldest first; one whose manifest is damaged is listed by id with no devices. */
  list(): BackupSummary[] {
    return this.backupIds().map((id) => {
      try {
        const m = this.manifest(id);
        return { id, time: m.time, devices: m.devices.map((d) => ({ name: d.name, size: d.size, mode: d.mode })) };
      } catch {
        return { id, time: '', devices: [] };
      }
    });
  }

  /**
   * Takes the repository's lock: shared by backups being created, exclusive for a prune's sweep.
   * Waits while the other kind holds it; the kernel drops it when the process dies.
   */
  lock(exclusive: boolean, onWait?: () => void): Promise<() => void> {
    return lockRepository(this.dir, exclusive, onWait);
  }

  /**
   * Runs `work` under the lock held shared, as a backup being made does: a prune's sweep does not
   * move packs under it. `progress` hears when it has to wait for one.
   */
  async whileShared<T>(progress: { note(text: string): void } | undefined, work: () => Promise<T>): Promise<T> {
    const release = await this.lock(false, () => progress?.note('waiting for a prune to finish its sweep'));
    try {
      return await work();
    } finally {
      release();
    }
  }

  create(client: BlksnapClient, options: CreateOptions): Promise<CreateResult> {
    return createBackup(this, client, options);
  }

  restore(options: RestoreOptions): Promise<RestoreResult> {
    return restoreBackup(this, options);
  }

  verify(options: VerifyOptions = {}): Promise<VerifyResult> {
    return verifyRepository(this, options);
  }

  prune(options: PruneOptions): Promise<PruneResult> {
    return pruneRepository(this, options);
  }

  /** Asks the daemon to serve a device of a backup as a device (backup_attach). */
  attach(client: BlksnapClient, options: Omit<api.BackupAttachParams, 'repo'>): Promise<api.DeviceInfo> {
    this.manifest(options.id); // ENOENT here, with the repository's path, rather than from the daemon
    return client.call(api.BackupAttach, { ...options, repo: this.dir });
  }
}
