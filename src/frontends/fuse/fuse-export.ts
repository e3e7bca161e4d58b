// Owns serving one BlockDevice as the file `disk` of a FUSE filesystem, inside the daemon: the kernel's
// requests are read by a worker thread into shared slots and answered here, straight from the device.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { BlockDevice } from '../../core/block-device.js';
import { errnoNumber, toBlkError } from '../../errors.js';
import { bytesToAlignment } from '../../os/koffi.js';
import { createEventFd, duplicate, mountFuse, unmountLazy } from '../../os/libc.js';
import { fuse as fuseParams } from '../../params.js';
import type { CachedReads } from './cached-read.js';
import { DISK_FILE_NAME, FuseRequests } from './requests.js';
import { possibleCpuCount, turnOnFuseRing } from './ring-switch.js';
import { RingEntry, ringEntryViews, sharedMemoryFor, SlotState, type ReaderMessage, type ReaderShared, type RingEntryViews, type RingMessage, type RingShared } from './slots.js';
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
  /**
   * Requests through io_uring where the kernel offers it (default true; turns the fuse module's
   * enable_uring on where it is off), else read(2)/write(2) on /dev/fuse. The ring threads (as many
   * as readers) spread their entries over the kernel's queues, one per possible CPU.
   */
  ioUring?: boolean;
  /** Ring entries in all (at least two per queue), each holding one request of up to maxTransfer. */
  ringEntryCount?: number;
  log?: (line: string) => void;
}

/** The rings of one export: their entries (views of shared memory), control words and threads. */
interface Rings {
  /** Entries per ring thread; thread t holds entries [t * perThread, (t + 1) * perThread). */
  perThread: number;
  control: Int32Array;
  entries: RingEntryViews[];
  /** Whether the request relayed in each entry has had its reply (this thread's view: the entry's state word may already say the next request's). */
  isAnswered: Uint8Array;
  wakeFds: number[];
  /** Per ring thread: a wake-up is due once the replies of this turn are all in. */
  isWakeDue: Uint8Array;
  workers: Worker[];
}

/** Copies `part` to `payload` at `at`, unless it is already there (a READ's data read in place). */
function copyUnlessThere(part: Buffer, payload: Buffer, at: number): void {
  if (part.length > 0 && !(part.buffer === payload.buffer && part.byteOffset === payload.byteOffset + at)) part.copy(payload, at);
}

/** What a write(2) to an eventfd adds: 1, as a 64-bit integer. */
const EVENTFD_ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

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
  #slotCount: number;
  #maxTransfer: number;
  #cachedReads: CachedReads | null;
  #ringsWanted: { queues: number; threads: number; entries: number } | null;
  #rings: Rings | null = null;
  #ringsReady: () => void = () => undefined;
  #areRingsReady = false;
  /**
   * Resolves once every ring thread is registering its entries (the kernel then moves requests to
   * the rings); never without rings.
   */
  readonly ringsReady = new Promise<void>((resolve) => (this.#ringsReady = resolve));

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
    const queues = options.ioUring === false ? 0 : possibleCpuCount();
    // Ring threads as many as readers; entries at least two per queue (each queue needs one, and a
    // CPU's requests one at a time would wait for each other), each one transfer's memory: past 16
    // CPUs (32 MiB of entries) the export stays with read/write.
    const ringThreads = Math.max(1, Math.min(queues, options.readerCount ?? 2));
    this.#ringsWanted = queues > 0 && queues <= 16 && turnOnFuseRing(this.#log) ? { queues, threads: ringThreads, entries: Math.max(2 * queues, options.ringEntryCount ?? 16) } : null;
    const spliceMinimum = fuseParams.readerSpliceMinimum;
    // Without rings, transfers every reader can splice (a kernel that refuses the rings at INIT gets 1 MiB ones, the larger copied).
    const maxTransfer = options.maxTransfer ?? (this.#ringsWanted || spliceMinimum === 0 ? 2 ** 20 : fuseParams.readWriteTransferMaximum);
    this.#maxTransfer = maxTransfer;
    // With rings, /dev/fuse carries only what comes before them (INIT, the first lookups) and forgets.
    const slotCount = options.slotCount ?? (this.#ringsWanted ? 4 : 16);
    this.#slotCount = slotCount;
    // The kernel refuses a read(2) buffer smaller than max_write plus room for the headers.
    const slotSize = maxTransfer + w.BUFFER_HEADER_ROOM;
    const memory = sharedMemoryFor(slotCount, slotSize);
    this.#control = new Int32Array(memory, 0, SlotState.headerInts + slotCount);
    const slots = Array.from({ length: slotCount }, (_, i) => Buffer.from(memory, SlotState.dataOffset + i * slotSize, slotSize));
    const ringEntries = this.#ringsWanted?.entries ?? 0;
    // Ring entries' request areas follow the /dev/fuse slots; their memory exists once the rings start.
    const allSlots = [...slots, ...Array.from({ length: ringEntries }, () => Buffer.alloc(0))];
    this.#requests = new FuseRequests(device, allSlots, {
      maxTransfer,
      send: (slot, head, body) => this.#send(slot, head, body),
      sendAsync: (slot, reply, sent) => this.#sendAsync(slot, reply, sent),
      release: (slot) => this.#release(slot),
      log: this.#log,
      offersRing: this.#ringsWanted !== null,
      ringAccepted: () => this.#startRings(allSlots),
    });
    const shared = options.readerCachedReads === false ? null : (device.fast?.sharedReads() ?? null);
    // Its own descriptor: the device may close its own while a reader is still reading.
    if (shared) this.#readFd = duplicate(shared.fd);
    if (shared?.image && shared.image.diffFd >= 0) this.#diffFd = duplicate(shared.image.diffFd);
    const image = shared?.image ? { ...shared.image, diffFd: this.#diffFd } : null;
    const cachedReads = shared ? { fd: this.#readFd, size: device.size, ...(image ? { image } : {}) } : null;
    this.#cachedReads = cachedReads;
    const readerCount = Math.max(1, Math.min(options.readerCount ?? (this.#ringsWanted ? 1 : 2), slotCount));
    const perReader = Math.floor(slotCount / readerCount);
    this.#workers = Array.from({ length: readerCount }, (_, r) => {
      const own = r === readerCount - 1 ? slotCount - r * perReader : perReader;
      const shared: ReaderShared = { fd, memory, slotCount, slotSize, firstSlot: r * perReader, ownSlotCount: own, cachedReads, spliceMinimum, pipeBytes: fuseParams.readerPipeBytes };
      const worker = new Worker(new URL('./reader-worker.js', import.meta.url), { workerData: shared });
      worker.unref();
      worker.on('message', (m: ReaderMessage) => {
        if ('slot' in m) this.#requests.serve(m.slot, m.length);
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

  /** READs the reader and ring threads answered from the page cache themselves. */
  get readsAnsweredByReaders(): number {
    return Atomics.load(this.#control, SlotState.answeredIndex) + (this.#rings ? Atomics.load(this.#rings.control, RingEntry.answeredIndex) : 0);
  }

  /** READs the reader threads answered by splice from the page cache. */
  get readsSplicedByReaders(): number {
    return Atomics.load(this.#control, SlotState.splicedIndex);
  }

  /** READs the ring threads answered from the page cache (0 without rings). */
  get readsAnsweredByRings(): number {
    return this.#rings ? Atomics.load(this.#rings.control, RingEntry.answeredIndex) : 0;
  }

  /** How requests reach the daemon: 'io_uring' once every ring thread is registering its entries, else 'read/write'. */
  get route(): 'io_uring' | 'read/write' {
    return this.#areRingsReady ? 'io_uring' : 'read/write';
  }

  /**
   * After the INIT reply agreed to io_uring: the ring threads register their entries, spread over
   * the kernel's queues; the kernel moves requests to the rings once every queue has one. Entry e
   * is FuseRequests' slot `slotCount + e`, a view of its request area.
   */
  #startRings(allSlots: Buffer[]): void {
    const wanted = this.#ringsWanted;
    if (!wanted || this.#rings || this.#isClosed) return;
    const perThread = Math.floor(wanted.entries / wanted.threads);
    const memory = new SharedArrayBuffer(4096 + perThread * wanted.threads * RingEntry.bytes(this.#maxTransfer));
    const entryBase = bytesToAlignment(new Uint8Array(memory), 4096);
    const control = new Int32Array(new SharedArrayBuffer(4 * (RingEntry.stateIndex + wanted.entries)));
    const entries = Array.from({ length: perThread * wanted.threads }, (_, e) => ringEntryViews(memory, entryBase, this.#maxTransfer, e));
    entries.forEach((entry, e) => {
      allSlots[this.#slotCount + e] = entry.request;
    });
    const rings: Rings = {
      perThread,
      control,
      entries,
      isAnswered: new Uint8Array(entries.length),
      wakeFds: [],
      isWakeDue: new Uint8Array(wanted.threads),
      workers: [],
    };
    this.#rings = rings;
    let readyCount = 0;
    for (let thread = 0; thread < wanted.threads; thread++) {
      const wakeFd = createEventFd();
      rings.wakeFds.push(wakeFd);
      const shared: RingShared = { fd: this.#fd, queueCount: wanted.queues, memory, entryBase, maxTransfer: this.#maxTransfer, firstEntry: thread * perThread, entryCount: perThread, firstSlot: this.#slotCount + thread * perThread, control: control.buffer as SharedArrayBuffer, wakeFd, cachedReads: this.#cachedReads };
      const worker = new Worker(new URL('./ring-worker.js', import.meta.url), { workerData: shared });
      worker.unref();
      worker.on('message', (m: RingMessage) => {
        if ('relayed' in m) {
          for (let i = 0; i < m.relayed.length; i += 2) {
            const slot = m.relayed[i] as number;
            rings.isAnswered[slot - this.#slotCount] = 0;
            this.#requests.serve(slot, m.relayed[i + 1] as number);
          }
        } else if ('ready' in m) {
          if (++readyCount === wanted.threads) {
            this.#areRingsReady = true;
            this.#ringsReady();
          }
        } else if (m.ended !== 'ENOTCONN') this.#log(`fuse ring ${thread} of ${this.#device.name} ended: ${m.ended}`);
      });
      worker.on('error', (e) => this.#log(`fuse ring ${thread} of ${this.#device.name} failed: ${String(e)}`));
      rings.workers.push(worker);
    }
  }

  /**
   * The reply to a relayed ring request: its error and arguments into the entry's header and
   * payload (in place when they are already there), then its ring is woken to commit it. The
   * header still holds the request's `unique`, where the out header has it too.
   */
  #ringReply(entry: number, head: Buffer, body?: Buffer): void {
    const rings = this.#rings as Rings;
    const { header, payload } = rings.entries[entry] as RingEntryViews;
    const args = head.subarray(w.OUT_HEADER_LENGTH);
    let error = head.readInt32LE(4);
    let length = args.length + (body?.length ?? 0);
    if (length > payload.length) {
      error = -errnoNumber('EIO'); // no reply is larger than a transfer
      length = 0;
    } else {
      copyUnlessThere(args, payload, 0);
      if (body) copyUnlessThere(body, payload, args.length);
    }
    header.writeUInt32LE(w.OUT_HEADER_LENGTH + length, 0);
    header.writeInt32LE(error, 4);
    header.writeUInt32LE(length, w.Ring.payloadSizeOffset);
    rings.isAnswered[entry] = 1;
    Atomics.store(rings.control, RingEntry.stateIndex + entry, RingEntry.replied);
    // One wake-up for the replies made in this turn of the event loop (a relayed batch answered at
    // once): the ring thread commits every replied entry it finds when woken. A microtask runs
    // before any I/O callback, so before unmount() can close the descriptor.
    const thread = Math.floor(entry / rings.perThread);
    if (rings.isWakeDue[thread]) return;
    rings.isWakeDue[thread] = 1;
    queueMicrotask(() => {
      rings.isWakeDue[thread] = 0;
      try {
        fs.writeSync(rings.wakeFds[thread] as number, EVENTFD_ONE);
      } catch {
        // The ring has stopped: the connection is gone, nobody to answer.
      }
    });
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
    const rings = this.#rings;
    if (rings) {
      Atomics.store(rings.control, RingEntry.stopIndex, 1);
      for (const wakeFd of rings.wakeFds) fs.writeSync(wakeFd, EVENTFD_ONE);
    }
    await Promise.all([...this.#workers, ...(rings?.workers ?? [])].map((worker) => exited(worker, 5000)));
    for (const wakeFd of rings?.wakeFds ?? []) fs.closeSync(wakeFd);
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
  #send(slot: number, head: Buffer, body?: Buffer): void {
    if (this.#fd < 0) return; // closed: the number may belong to another file by now
    if (slot >= this.#slotCount) return this.#ringReply(slot - this.#slotCount, head, body);
    try {
      if (body && body.length > 0) fs.writevSync(this.#fd, [head, body]);
      else fs.writeSync(this.#fd, head);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENODEV') this.#log(`fuse reply for ${this.#device.name}: ${String(e)}`);
    }
  }

  #sendAsync(slot: number, reply: Buffer, sent: () => void): void {
    if (this.#fd < 0) return sent();
    if (slot >= this.#slotCount) {
      this.#ringReply(slot - this.#slotCount, reply);
      return sent();
    }
    fs.write(this.#fd, reply, 0, reply.length, null, (e) => {
      if (e && e.code !== 'ENOENT' && e.code !== 'ENODEV') this.#log(`fuse reply for ${this.#device.name}: ${String(e)}`);
      sent();
    });
  }

  #release(slot: number): void {
    if (slot >= this.#slotCount) {
      // A ring entry goes back by its commit; one left without a reply (a malformed request) gets EIO.
      const entry = slot - this.#slotCount;
      if (this.#rings && this.#rings.isAnswered[entry] === 0) {
        const head = Buffer.alloc(w.OUT_HEADER_LENGTH);
        head.writeInt32LE(-errnoNumber('EIO'), 4);
        this.#ringReply(entry, head);
      }
      return;
    }
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
