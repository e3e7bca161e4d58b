// Owns a repository in a local directory: objects are files under it, written to a temporary name
// and renamed into place (whole or not at all), made durable together by one syncfs, and locked
// with flock. Every call runs off the event loop: the daemon serves backups from here too.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { threadId } from 'node:worker_threads';
import { BlkError, toBlkError } from '../errors.js';
import { syncFilesystem, tryLockAsync } from '../os/libc.js';
import type { Backend, BackendSpec, ObjectStat, RepositoryLock } from './backend.js';
import { TEMP_MARK } from './layout.js';

let tempCounter = 0;

export class LocalBackend implements Backend {
  readonly requestsAtOnce = 8;
  readonly spec: BackendSpec;
  readonly location: string;
  readonly dir: string;

  constructor(dir: string) {
    this.dir = path.resolve(dir);
    this.spec = { kind: 'local', dir: this.dir };
    this.location = this.dir;
  }

  #path(name: string): string {
    return path.join(this.dir, name);
  }

  async read(name: string): Promise<Buffer> {
    try {
      return await fs.promises.readFile(this.#path(name));
    } catch (e) {
      throw this.#error(e, name);
    }
  }

  async readRange(name: string, offset: number, into: Uint8Array): Promise<number> {
    let handle: fs.promises.FileHandle;
    try {
      handle = await fs.promises.open(this.#path(name), 'r');
    } catch (e) {
      throw this.#error(e, name);
    }
    try {
      let done = 0;
      while (done < into.length) {
        const { bytesRead } = await handle.read(into, done, into.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    } finally {
      await handle.close();
    }
  }

  async write(name: string, data: Uint8Array, options: { inExistingFolder?: boolean } = {}): Promise<void> {
    const file = this.#path(name);
    const temp = `${file}${TEMP_MARK}${process.pid}.${threadId}.${tempCounter++}`;
    try {
      await fs.promises.writeFile(temp, data, { mode: 0o644, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || options.inExistingFolder) throw this.#error(e, name);
      await fs.promises.mkdir(path.dirname(file), { recursive: true });
      await fs.promises.writeFile(temp, data, { mode: 0o644, flag: 'wx' });
    }
    await fs.promises.rename(temp, file);
  }

  async list(folder: string): Promise<string[]> {
    let entries: fs.Dirent[];
    try {
      entries = await fs.promises.readdir(this.#path(folder), { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw this.#error(e, folder);
    }
    return entries.map((e) => (e.isDirectory() ? `${e.name}/` : e.name)).sort();
  }

  async listTree(folder: string): Promise<string[]> {
    let entries: fs.Dirent[];
    try {
      entries = await fs.promises.readdir(this.#path(folder), { recursive: true, withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw this.#error(e, folder);
    }
    const top = this.#path(folder);
    return entries.filter((e) => e.isFile()).map((e) => path.relative(top, path.join(e.parentPath ?? e.path, e.name))).sort();
  }

  async size(name: string): Promise<number | null> {
    const st = await fs.promises.stat(this.#path(name)).catch(() => null);
    return st ? st.size : null;
  }

  async remove(name: string): Promise<void> {
    await fs.promises.rm(this.#path(name), { recursive: true, force: true });
  }

  stagingPath(name: string): string {
    return `${this.#path(name.replace(/\/$/, ''))}${TEMP_MARK}${process.pid}.${threadId}`;
  }

  async commit(name: string): Promise<void> {
    await fs.promises.rename(this.stagingPath(name), this.#path(name.replace(/\/$/, '')));
  }

  async sync(): Promise<void> {
    const fd = await new Promise<number>((resolve, reject) => fs.open(this.dir, 'r', (e, d) => (e ? reject(e) : resolve(d))));
    try {
      await syncFilesystem(fd);
    } finally {
      await new Promise<void>((resolve) => fs.close(fd, () => resolve()));
    }
  }

  async totalBytes(): Promise<number> {
    let total = 0;
    for (const entry of await fs.promises.readdir(this.dir, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile()) continue;
      const st = await fs.promises.stat(path.join(entry.parentPath, entry.name)).catch(() => null);
      total += st?.size ?? 0;
    }
    return total;
  }

  async stat(name: string): Promise<ObjectStat | null> {
    try {
      const st = await fs.promises.stat(this.#path(name));
      return { size: st.size, modified: st.mtimeMs, retainedUntil: null };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw this.#error(e, name);
    }
  }

  async lock(onWait?: (holder: string) => void): Promise<RepositoryLock> {
    const handle = await fs.promises.open(this.#path('lock'), fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o644);
    try {
      let told = false;
      while (!(await tryLockAsync(handle.fd, true))) {
        if (!told) onWait?.('by another process on this host');
        told = true;
        await new Promise((r) => setTimeout(r, 100));
      }
    } catch (e) {
      await handle.close();
      throw e;
    }
    // flock binds while the descriptor is open: nobody takes it over.
    return { release: () => handle.close(), isLost: () => false };
  }

  localPath(name: string): string {
    return this.#path(name);
  }

  bypassCache(): void {}

  #error(e: unknown, name: string): BlkError {
    const err = toBlkError(e);
    return new BlkError(err.code, `${name} in ${this.dir}: ${err.code === 'ENOENT' ? 'not there' : err.message}`, { path: this.#path(name) });
  }
}
