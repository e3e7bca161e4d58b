// Owns serving one BlockDevice as the file `disk` of a FUSE filesystem, inside the daemon: the kernel's
// requests are read by a worker thread into shared slots and answered here, straight from the device.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { BlockDevice } from '../../core/block-device.js';
import { toBlkError } from '../../errors.js';
import { duplicate, mountFuse, unmountLazy } from '../../os/libc.js';
import { DISK_FILE_NAME, FuseRequests } from './requests.js';
import { sharedMemoryFor, SlotState, type ReaderMessage, type ReaderShared } from './slots.js';
import * as w from './wire.js';

const S_IFDIR = 0o040000;

export interface FuseExportOptions {
  /** Largest READ/WRITE the kernel sends (FUSE max_pages × 4 KiB; 1 MiB needs max_pages 256). */
  maxTransfer?: number;
  /** Requests served at once; further ones wait in the kernel. */
  slotCount?: number;
  /**
   * Threads reading requests. The kernel copies each request (a write's payload too) into the
   * reader page by page, so two readers put both cores on it (bench/block-device.ts).
   */
  readerCount?: number;
  /** Readers answer cached reads of a device themselves (default true; false for A/B runs). */
  readerCachedReads?: boolean;
  log?: (line: string) => void;
}

export class FuseExport {
  readonly mountpoint: string;
  readonly file: string;
  #device: BlockDevice;
  #fd: number;
  #workers: Worker[];
  #control: Int32Array;
  #requests: FuseRequests;
  #ended: Promise<void>;
  #log: (line: string) => void;
  #isClosed = false;
  /** Duplicates of the device's descriptor (and an image's difference storage's) for the readers' cached reads; -1 when none. */
  #readFd = -1;
  #diffFd = -1;

  /** Mounts a FUSE filesystem at `mountpoint` whose only file, `disk`, is `device`. */
  static mount(device: BlockDevice, mountpoint: string, options: FuseExportOptions = {}): FuseExport {
    fs.mkdirSync(mountpoint, { recursive: true, mode: 0o700 });
    const fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      const data = `fd=${fd},rootmode=${(S_IFDIR | 0o755).toString(8)},user_id=0,group_id=0,allow_other,default_permissions`;
      mountFuse(mountpoint, 'fuse.blksnapd', data);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return new FuseExport(device, mountpoint, fd, options);
  }

  private constructor(device: BlockDevice, mountpoint: string, fd: number, options: FuseExportOptions) {
    this.#device = device;
    this.mountpoint = mountpoint;
    this.file = path.join(mountpoint, DISK_FILE_NAME);
    this.#fd = fd;
    this.#log = options.log ?? (() => undefined);
    const maxTransfer = options.maxTransfer ?? 2 ** 20;
    const slotCount = options.slotCount ?? 16;
    // The kernel refuses a read(2) buffer smaller than max_write plus room for the headers.
    const slotSize = maxTransfer + w.BUFFER_HEADER_ROOM;
    const memory = sharedMemoryFor(slotCount, slotSize);
    this.#control = new Int32Array(memory, 0, SlotState.headerInts + slotCount);
    const slots = Array.from({ length: slotCount }, (_, i) => Buffer.from(memory, SlotState.dataOffset + i * slotSize, slotSize));
    this.#requests = new FuseRequests(device, slots, {
      maxTransfer,
      send: (head, body) => this.#send(head, body),
      sendAsync: (reply, sent) => this.#sendAsync(reply, sent),
      release: (slot) => this.#release(slot),
      log: this.#log,
    });
    const shared = options.readerCachedReads === false ? null : (device.fast?.sharedReads() ?? null);
    // Its own descriptor: the device may close its own while a reader is still reading.
    if (shared) this.#readFd = duplicate(shared.fd);
    if (shared?.image && shared.image.diffFd >= 0) this.#diffFd = duplicate(shared.image.diffFd);
    const image = shared?.image ? { ...shared.image, diffFd: this.#diffFd } : null;
    const cachedReads = shared ? { fd: this.#readFd, size: device.size, ...(image ? { image } : {}) } : null;
    const readerCount = Math.max(1, Math.min(options.readerCount ?? 2, slotCount));
    const perReader = Math.floor(slotCount / readerCount);
    this.#workers = Array.from({ length: readerCount }, (_, r) => {
      const own = r === readerCount - 1 ? slotCount - r * perReader : perReader;
      const shared: ReaderShared = { fd, memory, slotCount, slotSize, firstSlot: r * perReader, ownSlotCount: own, cachedReads };
      const worker = new Worker(new URL('./reader-worker.js', import.meta.url), { workerData: shared });
      worker.unref();
      worker.on('message', (m: ReaderMessage) => {
        if (!('ended' in m)) this.#requests.serve(m.slot, m.length);
      });
      return worker;
    });
    // The connection has ended when any reader saw ENODEV (all will); a failing reader ends it too.
    this.#ended = Promise.race(
      this.#workers.map(
        (worker) =>
          new Promise<void>((resolve) => {
            worker.on('message', (m: ReaderMessage) => 'ended' in m && resolve());
            worker.on('error', (e) => {
              this.#log(`fuse reader of ${device.name} failed: ${String(e)}`);
              resolve();
            });
            worker.on('exit', () => resolve());
          }),
      ),
    );
  }

  /** READs the reader threads answered from the page cache themselves. */
  get readsAnsweredByReaders(): number {
    return Atomics.load(this.#control, SlotState.answeredIndex);
  }

  /**
   * Unmounts (lazily: a loop device still bound keeps it until released) and ends the connection;
   * requests still coming after that fail with ENOTCONN in the kernel.
   */
  async unmount(): Promise<void> {
    if (this.#isClosed) return;
    this.#isClosed = true;
    try {
      unmountLazy(this.mountpoint);
    } catch (e) {
      this.#log(`unmount of ${this.mountpoint}: ${toBlkError(e).toString()}`);
    }
    // Unused, the filesystem goes at once and the reader sees ENODEV; in use, closing the
    // descriptor below aborts the connection.
    await Promise.race([this.#ended, new Promise((r) => setTimeout(r, 1000).unref())]);
    Atomics.store(this.#control, SlotState.stopIndex, 1);
    Atomics.add(this.#control, SlotState.wakeIndex, 1);
    Atomics.notify(this.#control, SlotState.wakeIndex);
    // The readers see the stop flag within one poll period and return. Not terminate(): stopping
    // a worker inside its FFI calls (or still loading them) can take the whole process down.
    await Promise.all(this.#workers.map((worker) => exited(worker, 5000)));
    fs.closeSync(this.#fd);
    this.#fd = -1;
    for (const readFd of [this.#readFd, this.#diffFd]) if (readFd >= 0) fs.closeSync(readFd);
    this.#readFd = -1;
    this.#diffFd = -1;
    try {
      fs.rmdirSync(this.mountpoint);
    } catch {
      // Still busy (lazily unmounted); the next start cleans it.
    }
  }

  /**
   * One reply, one write(2): the kernel copies it into the waiting request and returns. An
   * interrupted request (ENOENT) or a gone connection (ENODEV) leaves nobody to answer.
   */
  #send(head: Buffer, body?: Buffer): void {
    if (this.#fd < 0) return; // closed: the number may belong to another file by now
    try {
      if (body && body.length > 0) fs.writevSync(this.#fd, [head, body]);
      else fs.writeSync(this.#fd, head);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENODEV') this.#log(`fuse reply for ${this.#device.name}: ${String(e)}`);
    }
  }

  #sendAsync(reply: Buffer, sent: () => void): void {
    if (this.#fd < 0) return sent();
    fs.write(this.#fd, reply, 0, reply.length, null, (e) => {
      if (e && e.code !== 'ENOENT' && e.code !== 'ENODEV') this.#log(`fuse reply for ${this.#device.name}: ${String(e)}`);
      sent();
    });
  }

  #release(slot: number): void {
    Atomics.store(this.#control, SlotState.headerInts + slot, SlotState.free);
    Atomics.add(this.#control, SlotState.wakeIndex, 1);
    Atomics.notify(this.#control, SlotState.wakeIndex);
  }
}

/** Resolves when the worker has exited; terminates it only if it has not after `timeoutMs`. */
function exited(worker: Worker, timeoutMs: number): Promise<void> {
  if (worker.threadId < 0) return Promise.resolve(); // already gone
  return new Promise((resolve) => {
    const timer = setTimeout(() => void worker.terminate().catch(() => undefined), timeoutMs);
    worker.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
