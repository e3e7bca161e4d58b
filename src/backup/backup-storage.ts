// Owns a backup of a device as a store (backup_attach): chunks read on demand through worker threads,
// checked against their digests, kept in a bounded cache; with --writable, writes go to a throw-away
// overlay file (an unnamed file: gone at detach) in chunk-sized pieces copied up on first write.
import * as fs from 'node:fs';
import type { Extent, Storage, StorageCapabilities } from '../backing/storage.js';
import { BlkError, toBlkError } from '../errors.js';
import { closeAsync, openUnnamedFile } from '../os/async-fs.js';
import { backup as params } from '../params.js';
import type { S3Access } from '../control/protocol.js';
import type { Backend, BackendSpec } from '../repository/backend.js';
import { backendAt } from '../repository/backends.js';
import { ChunkIndex } from '../repository/chunk-index.js';
import { isZeroDigest } from '../repository/digest.js';
import { readIndex } from '../repository/digest-index.js';
import { BACKUP_ID_PATTERN, isDeviceName, names } from '../repository/layout.js';
import { Repository } from '../repository/repository.js';
import type { WorkerPool } from './workers/worker-pool.js';

/** A repository in a bucket as a daemon reaches it for one attach: with its client's access, its own cache (never the AWS environment). */
export function bucketRepository(location: string, s3: S3Access, cacheDir: string): Backend {
  const credentials = { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, ...(s3.sessionToken ? { sessionToken: s3.sessionToken } : {}) };
  return backendAt(location, { ...(s3.endpoint ? { s3Endpoint: s3.endpoint } : {}), s3Region: s3.region, s3Addressing: s3.pathStyle ? 'path' : 'virtual', ...(s3.ca ? { s3CaPem: s3.ca } : {}), credentials, cacheDir }, {});
}

export interface BackupStorageOptions {
  workers: WorkerPool<'attach'>;
  /** An encrypted repository's secret, as its client gave it. */
  secret?: Buffer;
  /** Bytes of decompressed chunks kept in memory. */
  cacheBytes: number;
  /** Where the overlay of a writable attach lives (an unnamed file); none: read-only. */
  overlayDir?: string;
}

/** The overlay of a writable attach: an unnamed file, which chunks it holds, copy-ups under way. */
interface Overlay {
  fd: number;
  copied: Uint8Array;
  copying: Map<number, Promise<void>>;
}

export class BackupStorage implements Storage {
  readonly path: string;
  readonly can: StorageCapabilities;
  readonly size: number;
  readonly chunkSize: number;
  #repo: Repository;
  #digests: Buffer;
  /** Where the repository's chunks are, as of the attach. */
  #chunks: ChunkIndex;
  #o: BackupStorageOptions;
  /** Least recently used first (a Map keeps insertion order; a hit moves to the end). */
  #cache = new Map<number, Uint8Array>();
  #cachedBytes = 0;
  #loading = new Map<number, Promise<Uint8Array>>();
  /** Where the last read ended: a read starting there is sequential. */
  #sequentialEnd = -1;
  #overlay: Overlay | null;
  #isClosed = false;
  /** Where packs are not local files (a bucket): the workers read them by range from this. */
  #remote: { repository?: BackendSpec };

  /** Takes away the hold that keeps a prune from removing the backup. */
  #releaseHold: () => Promise<void>;

  private constructor(repo: Repository, label: string, size: number, chunkSize: number, digests: Buffer, chunks: ChunkIndex, options: BackupStorageOptions, overlayFd: number | null, releaseHold: () => Promise<void>) {
    this.path = label;
    this.#releaseHold = releaseHold;
    this.#chunks = chunks;
    this.#repo = repo;
    this.size = size;
    this.chunkSize = chunkSize;
    this.#digests = digests;
    this.#o = options;
    this.#remote = repo.backend.spec.kind === 's3' ? { repository: repo.backend.spec } : {};
    const count = Math.ceil(size / chunkSize);
    this.#overlay = overlayFd === null ? null : { fd: overlayFd, copied: new Uint8Array(count), copying: new Map() };
    this.can = { isBlockDevice: false, isReadOnly: overlayFd === null, grow: false };
  }

  /**
   * Opens backup `id`'s device `device` in `repo`; ENOENT when there is no such backup or device,
   * EIO when it is damaged. The hold (a session naming the backup) that keeps a prune from removing
   * it is placed before anything is read; every call runs in the thread pool, so a slow repository
   * never holds the event loop.
   */
  static async open(location: string | Backend, id: string, device: string, options: BackupStorageOptions): Promise<BackupStorage> {
    if (!BACKUP_ID_PATTERN.test(id)) throw new BlkError('EINVAL', `'${id}' is not a backup id (see backup_list)`);
    if (!isDeviceName(device)) throw new BlkError('EINVAL', `'${device}' is not a device name`);
    const repo = await Repository.open(location, options.secret ? { secret: options.secret } : {});
    let releaseHold: (() => Promise<void>) | null = null;
    try {
      // A prune keeps a backup that is served, while this session lives, and leaves whatever it marks
      // meanwhile; one it already took away is gone.
      releaseHold = await repo.hold(id);
      const manifest = await repo.manifest(id);
      const entry = manifest.devices.find((d) => d.name === device);
      if (!entry) throw new BlkError('ENOENT', `backup ${id} has no device ${device} (it has ${manifest.devices.map((d) => d.name).join(', ')})`);
      const index = await readIndex(repo.backend, names.indexRoot(id, entry.index), repo.cipher);
      const chunks = await ChunkIndex.loadForReading(repo.backend, repo.cipher);
      const overlayFd = options.overlayDir === undefined ? null : await openUnnamedFile(options.overlayDir);
      return new BackupStorage(repo, `${repo.location}#${id}/${device}`, index.size, index.chunkSize, index.digests, chunks, options, overlayFd, releaseHold);
    } catch (e) {
      await releaseHold?.();
      throw e;
    }
  }

  probeSize(): number {
    return this.size;
  }

  identity(): null {
    return null;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    const end = offset + into.length;
    const first = Math.floor(offset / this.chunkSize);
    const last = Math.floor((end - 1) / this.chunkSize);
    // The chunks of one read go to a worker together; a read that follows the last one also starts
    // loading what comes next, so a reader one request at a time (dd, cp from a mounted backup) finds it ready.
    if (into.length > 0) this.#loadRange(first, last + 1);
    if (offset === this.#sequentialEnd && into.length > 0) this.#loadRange(last + 1, Math.ceil(Math.min(this.size, end + params.readAheadBytes) / this.chunkSize));
    this.#sequentialEnd = end;
    const pieces: Array<Promise<void>> = [];
    for (let c = first; c * this.chunkSize < end; c++) {
      const start = c * this.chunkSize;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + this.chunkLength(c));
      const target = into.subarray(from - offset, to - offset);
      if (this.#overlay?.copied[c]) {
        pieces.push(this.#readOverlay(from, target));
      } else if (isZeroDigest(this.#digests, c * 32)) {
        target.fill(0);
      } else {
        pieces.push(this.#chunk(c).then((data) => target.set(data.subarray(from - start, to - start))));
      }
    }
    await Promise.all(pieces);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    const overlay = this.#writableOverlay();
    const end = offset + data.length;
    for (let c = Math.floor(offset / this.chunkSize); c * this.chunkSize < end; c++) {
      const start = c * this.chunkSize;
      const covers = offset <= start && end >= start + this.chunkLength(c);
      if (!overlay.copied[c] && !covers) await this.#copyUp(c);
      overlay.copied[c] = 1;
    }
    let done = 0;
    while (done < data.length) {
      done += await new Promise<number>((resolve, reject) =>
        fs.write(overlay.fd, data, done, data.length - done, offset + done, (e, n) => (e ? reject(e) : resolve(n))),
      );
    }
  }

  async flush(): Promise<void> {
    const overlay = this.#overlay;
    if (overlay) await new Promise<void>((resolve, reject) => fs.fdatasync(overlay.fd, (e) => (e ? reject(e) : resolve())));
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.zero(offset, length);
  }

  async zero(offset: number, length: number): Promise<void> {
    this.#writableOverlay();
    const piece = new Uint8Array(Math.min(length, 1024 * 1024));
    for (let done = 0; done < length; done += piece.length) await this.write(offset + done, piece.subarray(0, Math.min(piece.length, length - done)));
  }

  /** Zero chunks (not overwritten) are holes: a copy of the backup stays sparse. */
  async extents(offset: number, length: number, maximumCount: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const end = Math.min(offset + length, this.size);
    let at = offset;
    while (at < end && out.length < maximumCount) {
      const c = Math.floor(at / this.chunkSize);
      const isHole = !this.#overlay?.copied[c] && isZeroDigest(this.#digests, c * 32);
      const stop = Math.min(end, c * this.chunkSize + this.chunkLength(c));
      const last = out.at(-1);
      if (last && last.isHole === isHole) last.length += stop - at;
      else out.push({ offset: at, length: stop - at, isHole, isZero: isHole });
      at = stop;
    }
    return out;
  }

  async cache(): Promise<void> {}

  async grow(): Promise<void> {
    throw new BlkError('ENOTSUP', 'a backup does not grow');
  }

  async close(): Promise<void> {
    if (this.#isClosed) return;
    this.#isClosed = true;
    this.#cache.clear();
    // The workers' descriptors of this repository's packs: a pack a prune deletes must not stay allocated.
    const chunks = this.#repo.backend.localPath(names.chunks);
    if (chunks !== null) await this.#o.workers.runOnAll({ kind: 'closePacks', dir: chunks.replace(/\/$/, ''), forget: this.#repo.cipher.secret }).catch(() => undefined);
    await this.#releaseHold();
    if (this.#overlay) await closeAsync(this.#overlay.fd);
  }

  chunkLength(c: number): number {
    return Math.min(this.chunkSize, this.size - c * this.chunkSize);
  }

  #writableOverlay(): Overlay {
    if (!this.#overlay) throw new BlkError('EROFS', `${this.path} is attached read-only (backup_attach --writable gives a throw-away overlay)`);
    return this.#overlay;
  }

  /** The chunk's backup bytes into the overlay, once, before a partial write lands on it. */
  #copyUp(c: number): Promise<void> {
    const overlay = this.#writableOverlay();
    let copying = overlay.copying.get(c);
    if (!copying) {
      copying = (async () => {
        const start = c * this.chunkSize;
        const data = isZeroDigest(this.#digests, c * 32) ? new Uint8Array(this.chunkLength(c)) : await this.#chunk(c);
        await new Promise<void>((resolve, reject) => fs.write(overlay.fd, data, 0, data.length, start, (e) => (e ? reject(e) : resolve())));
        overlay.copied[c] = 1;
      })().finally(() => overlay.copying.delete(c));
      overlay.copying.set(c, copying);
    }
    return copying;
  }

  #readOverlay(offset: number, into: Uint8Array): Promise<void> {
    const fd = this.#writableOverlay().fd;
    return new Promise((resolve, reject) =>
      fs.read(fd, into, 0, into.length, offset, (e, n) => (e ? reject(e) : n === into.length ? resolve() : reject(new BlkError('EIO', `overlay read of ${into.length} bytes at ${offset} gave ${n}`)))),
    );
  }

  /** A chunk's bytes: from the cache, or loaded and checked by a worker (one load per chunk at a time). */
  #chunk(c: number): Promise<Uint8Array> {
    const hit = this.#cache.get(c);
    if (hit) {
      this.#cache.delete(c);
      this.#cache.set(c, hit);
      return Promise.resolve(hit);
    }
    const loading = this.#loading.get(c);
    if (loading) return loading;
    this.#startLoad(c, 1);
    return this.#loading.get(c) as Promise<Uint8Array>;
  }

  /** Whether chunk `c` has bytes to load: not zero, not in the overlay, not cached, not being loaded. */
  #isToLoad(c: number): boolean {
    return !isZeroDigest(this.#digests, c * 32) && !this.#overlay?.copied[c] && !this.#cache.has(c) && !this.#loading.has(c);
  }

  /** Starts loading the chunks of [first, end) that need it, consecutive ones in one worker task each (up to loadTaskBytes). */
  #loadRange(first: number, end: number): void {
    const perTask = Math.max(1, Math.floor(params.loadTaskBytes / this.chunkSize));
    for (let c = first; c < end; ) {
      if (!this.#isToLoad(c)) {
        c++;
        continue;
      }
      let n = 1;
      while (c + n < end && n < perTask && this.#isToLoad(c + n)) n++;
      this.#startLoad(c, n);
      c += n;
    }
  }

  /**
   * Loads chunks [first, first + n) in one worker task, each with its own promise in #loading. When
   * the task fails, each chunk is loaded alone: only a damaged chunk fails, with its own offset, and
   * a chunk a prune moved to another pack is looked up again.
   */
  #startLoad(first: number, n: number): void {
    // A rejection, never a throw: a chunk missing from the index must fail only its own load, not
    // the read that started loading it ahead.
    const load = async (from: number, count: number): Promise<Uint8Array[]> =>
      (await this.#o.workers.run({ kind: 'load', secret: this.#repo.cipher.secret, ...this.#remote, items: this.#chunks.loadItems(this.#repo.backend, { size: this.size, chunkSize: this.chunkSize, digests: this.#digests }, from, count) })).data;
    // The pack indexes are loaded again once per failed task, not once per chunk of it.
    const together = load(first, n).catch(async () => {
      this.#chunks = await ChunkIndex.loadForReading(this.#repo.backend, this.#repo.cipher).catch(() => this.#chunks);
      return null;
    });
    for (let i = 0; i < n; i++) {
      const c = first + i;
      const loading = together
        .then(async (data) => (data ? (data[i] as Uint8Array) : ((await load(c, 1))[0] as Uint8Array)))
        .then((data) => {
          this.#remember(c, data);
          return data;
        })
        .catch((e: unknown) => {
          throw new BlkError('EIO', `${this.path}: chunk ${c} at offset ${c * this.chunkSize}: ${toBlkError(e).message}`);
        })
        .finally(() => this.#loading.delete(c));
      // A chunk loaded ahead may fail with nobody reading it: its reader, if one comes, gets the error.
      loading.catch(() => undefined);
      this.#loading.set(c, loading);
    }
  }

  #remember(c: number, data: Uint8Array): void {
    if (this.#isClosed || data.length > this.#o.cacheBytes) return;
    this.#cache.set(c, data);
    this.#cachedBytes += data.length;
    for (const [k, v] of this.#cache) {
      if (this.#cachedBytes <= this.#o.cacheBytes) break;
      this.#cache.delete(k);
      this.#cachedBytes -= v.length;
    }
  }
}
