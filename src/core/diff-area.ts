// Owns copy-on-write for one device of a taken snapshot: keeping chunk originals, and the image's view of them.
import type { Extent, Storage } from '../backing/storage.js';
import { BlkError, toBlkError } from '../errors.js';
import { snapshot as params } from '../params.js';
import { InFlight } from '../util/in-flight.js';
import { settleAll, settleThenThrow } from '../util/settle.js';
import { ChunkMap, ChunkState } from './chunk-map.js';
import type { ImageReadGate, SendSink } from './block-device.js';
import type { DiffStorage } from './diff-storage.js';
import { OriginReaders } from './origin-readers.js';
import type { SplicePipe } from '../os/splice.js';

/** What a diff area needs from its snapshot: the sticky error, and a way to set it. */
export interface SnapshotHealth {
  /** The error that corrupted the snapshot, or null. */
  readonly error: BlkError | null;
  corrupt(device: string, error: BlkError): void;
}

/**
 * blksnap's diff_area. Before the first write after the take touches a chunk, the chunk's
 * original is read from the device and stored in the difference storage; only then may the write
 * land. Concurrent writers of one chunk share one copy (one promise per chunk in flight); the
 * consecutive untouched chunks one write touches are kept by one copy into consecutive slots. At
 * most `maximumInQueue` chunks are being copied (held in memory) at once; writers wait past that.
 *
 * A failed copy never fails the device write: it corrupts the snapshot (sticky, first error wins),
 * copy-on-write stops, image I/O fails with EIO, and the device goes on unharmed.
 */
export class DiffArea {
  readonly deviceName: string;
  readonly chunks: ChunkMap;
  #origin: Storage;
  #diff: DiffStorage;
  #health: SnapshotHealth;
  #copies = new Map<number, Promise<void>>();
  #maximumInQueue: number;
  #inQueue = 0;
  #queueWaiters: Array<{ count: number; resolve: () => void }> = [];
  /** Image reads of untouched chunks from the device (here, by sendfile, in other threads): a COW write waits for them. */
  #originReaders = new OriginReaders();
  /** Set by stop() at destroy: no copy starts after it, so drain() ends and the store can close. */
  #isStopped = false;
  /** copyOnWrite() calls under way: one may be between windows with no copy in flight. */
  #calls = new InFlight();

  /** For threads that answer image reads of untouched chunks themselves (ImageReadGate); pins[0] = 1: the image is closed or corrupted. */
  readonly readGate: ImageReadGate;

  constructor(deviceName: string, origin: Storage, diff: DiffStorage, health: SnapshotHealth, options: { chunkMinimumShift?: number; maximumInQueue: number }) {
    this.deviceName = deviceName;
    this.#origin = origin;
    this.#diff = diff;
    this.#health = health;
    this.chunks = new ChunkMap(origin.size, options.chunkMinimumShift);
    this.readGate = {
      state: this.chunks.state,
      pins: this.#originReaders.threadPins,
      chunkShift: this.chunks.chunkShift,
      slot: this.chunks.slot,
      diffFd: diff.pageCacheDescriptor(),
      isDiffCheckedFirst: diff.isCopyDirect,
      isOriginCheckedFirst: origin.fast?.readsOncePastCache?.() ?? false,
      cachedChunks: new Uint8Array(new SharedArrayBuffer(this.chunks.chunkCount)),
    };
    this.#maximumInQueue = options.maximumInQueue;
  }

  /**
   * The image's allocation: where its chunks are still untouched it is the device's (asked of the
   * store, then checked again: a chunk copied meanwhile may have been trimmed on the device since,
   * so it counts as data); every other chunk is data. Never a hole where the image has data.
   */
  async imageExtents(offset: number, length: number, maximumCount: number): Promise<Extent[]> {
    const { chunks } = this;
    const end = Math.min(offset + length, chunks.capacity);
    const out: Extent[] = [];
    const push = (e: Extent): void => {
      const last = out.at(-1);
      if (last && last.isHole === e.isHole && last.isZero === e.isZero && last.offset + last.length === e.offset) last.length += e.length;
      else out.push({ ...e });
    };
    let pos = offset;
    while (pos < end && out.length < maximumCount) {
      let j = chunks.first(pos);
      const isUntouched = chunks.state[j] === ChunkState.Untouched;
      while ((j + 1) * chunks.chunkSize < end && (chunks.state[j + 1] === ChunkState.Untouched) === isUntouched) j++;
      const runEnd = Math.min(end, (j + 1) * chunks.chunkSize);
      if (!isUntouched) {
        // Kept chunks are data; discarded ones read as zeros.
        for (let k = chunks.first(pos); k * chunks.chunkSize < runEnd; k++) {
          const from = Math.max(pos, k * chunks.chunkSize);
          const isDiscarded = chunks.state[k] === ChunkState.Discarded;
          push({ offset: from, length: Math.min(runEnd, (k + 1) * chunks.chunkSize) - from, isHole: isDiscarded, isZero: isDiscarded });
        }
        pos = runEnd;
        continue;
      }
      const found = await this.#origin.extents(pos, runEnd - pos, maximumCount);
      for (const e of found) {
        const from = Math.max(e.offset, pos);
        const to = Math.min(e.offset + e.length, runEnd);
        for (let at = from; at < to; ) {
          const i = chunks.first(at);
          const pieceEnd = Math.min(to, (i + 1) * chunks.chunkSize);
          const stillUntouched = chunks.state[i] === ChunkState.Untouched;
          push({ offset: at, length: pieceEnd - at, isHole: stillUntouched && e.isHole, isZero: stillUntouched && e.isZero });
          at = pieceEnd;
        }
      }
      const covered = found.length > 0 ? Math.min(runEnd, Math.max(...found.map((e) => e.offset + e.length))) : runEnd;
      if (covered <= pos) {
        push({ offset: pos, length: runEnd - pos, isHole: false, isZero: false });
        pos = runEnd;
      } else {
        pos = covered;
      }
    }
    return out;
  }

  /** Chunks being copied now. */
  get copiesInFlight(): number {
    return this.#copies.size;
  }

  /**
   * Called by the tracker before a device write to [offset, offset+length) lands. Resolves when
   * the originals of the touched chunks are kept (or the snapshot is corrupted); never rejects.
   */
  async copyOnWrite(offset: number, length: number): Promise<void> {
    this.#calls.enter();
    try {
      await this.#copyRange(offset, length);
    } finally {
      this.#calls.leave();
    }
  }

  async #copyRange(offset: number, length: number): Promise<void> {
    const { chunks } = this;
    const first = chunks.first(offset);
    const last = chunks.last(offset, length);
    // In windows of the queue's size (in chunks): a trim of a whole large device must not create a
    // promise per chunk at once.
    let pending: Array<Promise<void>> = [];
    let pendingChunks = 0;
    for (let i = first; i <= last; ) {
      const { copy, count } = this.#ensureCopiedFrom(i, last);
      if (copy) {
        pending.push(copy);
        pendingChunks += count;
      }
      i += count;
      if (pendingChunks >= this.#maximumInQueue) {
        await Promise.all(pending);
        pending = [];
        pendingChunks = 0;
      }
    }
    if (pending.length) await Promise.all(pending);
    for (let i = first; i <= last; i++) await this.#originReaders.drained(i);
  }

  /** Reads the image: kept originals from the difference storage, the rest from the device (read once: a backup reads an image through). */
  async readImage(offset: number, into: Uint8Array): Promise<void> {
    this.#checkHealthy();
    const { chunks } = this;
    const end = offset + into.length;
    const work: Array<Promise<void>> = [];
    try {
      let pos = offset;
      while (pos < end) {
        const i = chunks.first(pos);
        let state = chunks.state[i];
        if (state === ChunkState.Copying) {
          await this.#copies.get(i);
          state = chunks.state[i];
        }
        if (state === ChunkState.Stored) {
          const pieceEnd = Math.min(end, (chunks.lastOfRun(i, end, state) + 1) * chunks.chunkSize);
          work.push(this.#diff.read(chunks.keptAt(i, pos), into.subarray(pos - offset, pieceEnd - offset)));
          pos = pieceEnd;
          continue;
        }
        if (state === ChunkState.Discarded) {
          const pieceEnd = Math.min(end, (chunks.lastOfRun(i, end, state) + 1) * chunks.chunkSize);
          into.fill(0, pos - offset, pieceEnd - offset);
          pos = pieceEnd;
          continue;
        }
        if (state !== ChunkState.Untouched) throw this.#imageError();
        // A run of untouched chunks is one device read; its chunks are pinned against COW writes.
        const j = chunks.lastOfRun(i, end, state);
        const runEnd = Math.min(end, (j + 1) * chunks.chunkSize);
        for (let k = i; k <= j; k++) this.#originReaders.pin(k);
        work.push(this.#origin.read(pos, into.subarray(pos - offset, runEnd - offset), true).finally(() => {
          for (let k = i; k <= j; k++) this.#originReaders.unpin(k);
        }));
        pos = runEnd;
      }
    } catch (e) {
      await settleThenThrow(work, e);
    }
    await settleAll(work);
    this.#checkHealthy();
  }

  /**
   * Fills `pipe` with an image range whose chunks are all untouched, read from the device once, past
   * the page cache, without passing through this process (splice); null when it cannot, having done
   * nothing (then readImage). The chunks are pinned as readImage pins them: a COW write to them waits
   * until the pipe holds their bytes, which are the pipe's own pages, so no later write reaches them.
   */
  spliceImage(offset: number, length: number, pipe: SplicePipe): Promise<void> | null {
    const origin = this.#origin.fast;
    if (this.#health.error || this.#isStopped || !origin?.spliceOnce || !origin.canSpliceOnce?.(offset, length)) return null;
    const { chunks } = this;
    const first = chunks.first(offset);
    const last = chunks.last(offset, length);
    for (let i = first; i <= last; i++) if (chunks.state[i] !== ChunkState.Untouched) return null;
    for (let i = first; i <= last; i++) this.#originReaders.pin(i);
    return origin
      .spliceOnce(offset, length, pipe)
      .finally(() => {
        for (let i = first; i <= last; i++) this.#originReaders.unpin(i);
      })
      .then(() => this.#checkHealthy());
  }

  /**
   * The image read done at once, where nothing can race it: every chunk of the range is untouched
   * (no device write to it can be landing: a write keeps the chunk's original first, and it is
   * synchronous here, so no copy starts meanwhile) or kept, and memory holds all of it. False when
   * it cannot: then readImage() (what was read is read again).
   */
  readImageNow(offset: number, into: Uint8Array): boolean {
    const origin = this.#origin.fast;
    if (this.#health.error || !origin) return false;
    const { chunks } = this;
    const end = offset + into.length;
    const last = chunks.last(offset, into.length);
    for (let i = chunks.first(offset); i <= last; i++) {
      const state = chunks.state[i];
      if (state !== ChunkState.Untouched && state !== ChunkState.Stored) return false;
    }
    let pos = offset;
    while (pos < end) {
      const i = chunks.first(pos);
      const state = chunks.state[i] as number;
      const runEnd = Math.min(end, (chunks.lastOfRun(i, end, state) + 1) * chunks.chunkSize);
      const piece = into.subarray(pos - offset, runEnd - offset);
      if (!(state === ChunkState.Stored ? this.#diff.readNow(chunks.keptAt(i, pos), piece) : origin.readNow(pos, piece, true))) return false;
      pos = runEnd;
    }
    return true;
  }

  /**
   * Sends a range of the image by page reference (sendfile) when every chunk of it is untouched
   * and cached, and the socket can tell when it has been read; returns the bytes sent of `prefix`
   * and range (fewer when the socket is full), or null having sent nothing. A COW write to those
   * chunks then waits, after keeping the original, until the client has read them (#copyRange):
   * the pages sent are the ones the write changes.
   */
  sendImageNow(sink: SendSink, prefix: Uint8Array, offset: number, length: number): number | null {
    const origin = this.#origin.fast;
    if (this.#health.error || this.#isStopped || !origin || !sink.knowsWhenRead) return null;
    const { chunks } = this;
    const first = chunks.first(offset);
    const last = chunks.last(offset, length);
    for (let i = first; i <= last; i++) if (chunks.state[i] !== ChunkState.Untouched) return null;
    if (!this.#originReaders.maySend(first, last)) return null;
    if (!origin.isCached(offset, length)) return null;
    const sent = origin.sendTo(sink.fd, prefix, offset, length);
    const dataSent = sent - prefix.length;
    if (dataSent > 0) this.#originReaders.sent(first, chunks.last(offset, dataSent), sink);
    return sent;
  }

  /**
   * Discards whole chunks of [offset, offset+length) from the image (a backup lets go of what it has
   * read): a kept original's slot is released for reuse and its space given back to the store; an
   * untouched chunk will never be copied. Either then reads as zeros. Chunks only partly in the
   * range stay as they are. A copy in flight is waited for, then released.
   */
  async discardImage(offset: number, length: number): Promise<void> {
    this.#checkHealthy();
    const { chunks } = this;
    const first = Math.ceil(offset / chunks.chunkSize);
    const end = Math.min(offset + length, chunks.capacity);
    for (let i = first; i < chunks.chunkCount && Math.min((i + 1) * chunks.chunkSize, chunks.capacity) <= end; i++) {
      if (chunks.state[i] === ChunkState.Copying) await this.#copies.get(i);
      const state = chunks.state[i];
      if (state === ChunkState.Untouched) Atomics.store(chunks.state, i, ChunkState.Discarded);
      else if (state === ChunkState.Stored) {
        // Discarded before the slot goes: a reader that sees the state never reads a reused slot.
        Atomics.store(chunks.state, i, ChunkState.Discarded);
        await this.#diff.release((chunks.slot[i] as number) * chunks.chunkSize, chunks.chunkSize);
      }
    }
  }

  /** Writes the image: the chunk's original is kept first, then the write lands on the kept copy. */
  async writeImage(offset: number, data: Uint8Array): Promise<void> {
    this.#checkHealthy();
    const { chunks } = this;
    const end = offset + data.length;
    const work: Array<Promise<void>> = [];
    try {
      for (let pos = offset; pos < end; ) {
        const i = chunks.first(pos);
        if (chunks.state[i] === ChunkState.Discarded) await this.#ensureZeroSlot(i);
        await this.#ensureCopied(i);
        if (chunks.state[i] !== ChunkState.Stored) throw this.#imageError();
        const pieceEnd = Math.min(end, (i + 1) * chunks.chunkSize);
        work.push(this.#diff.write(chunks.keptAt(i, pos), data.subarray(pos - offset, pieceEnd - offset)));
        pos = pieceEnd;
      }
    } catch (e) {
      await settleThenThrow(work, e);
    }
    await settleAll(work);
  }

  /** Destroy: no copy starts from now on; the writes go on without keeping originals. */
  stop(): void {
    this.#isStopped = true;
    this.closeReadGate();
  }

  /** Other threads stop reading the image themselves (destroyed, or corrupted: every read must fail as readImage's). */
  closeReadGate(): void {
    this.#originReaders.closeToThreads();
  }

  /**
   * Resolves when no copy is in flight and no copyOnWrite() call is under way (after stop(), before
   * the difference storage closes). A call between two windows has no copy in flight, yet would
   * start the next window's copies after the store closed.
   */
  async drain(): Promise<void> {
    for (;;) {
      await this.#calls.idle();
      if (this.#copies.size === 0) return;
      await Promise.allSettled([...this.#copies.values()]);
    }
  }

  #checkHealthy(): void {
    if (this.#health.error) throw this.#imageError();
    if (this.#isStopped) throw new BlkError('ESHUTDOWN', `the snapshot of ${this.deviceName} is being destroyed`);
  }

  #imageError(): BlkError {
    const cause = this.#health.error;
    if (cause === null && this.#isStopped) return new BlkError('ESHUTDOWN', `the snapshot of ${this.deviceName} is being destroyed`);
    return new BlkError('EIO', `snapshot image of ${this.deviceName} is corrupted${cause ? `: ${cause.toString()}` : ''}`);
  }

  /** A discarded chunk written again: a slot of zeros first (the image reads zeros there), then it is kept as any other. */
  #ensureZeroSlot(i: number): Promise<void> {
    const { chunks } = this;
    const inFlight = this.#copies.get(i);
    if (inFlight) return inFlight;
    Atomics.store(chunks.state, i, ChunkState.Copying);
    const filling = (async () => {
      try {
        const at = await this.#diff.allocate(chunks.chunkSize, chunks.chunkSize);
        await this.#diff.write(at, new Uint8Array(chunks.lengthOf(i, 1)));
        chunks.slot[i] = at / chunks.chunkSize;
        Atomics.store(chunks.state, i, ChunkState.Stored);
      } catch (e) {
        chunks.state[i] = ChunkState.Failed;
        this.closeReadGate();
        this.#health.corrupt(this.deviceName, toBlkError(e));
      }
    })().finally(() => this.#copies.delete(i));
    this.#copies.set(i, filling);
    return filling;
  }

  #ensureCopied(i: number): Promise<void> | undefined {
    return this.#ensureCopiedFrom(i, i).copy;
  }

  /**
   * Makes sure chunk `i` is kept, or being kept: its copy in flight, or a new one. A new copy takes
   * along the untouched chunks after it up to `last` (at most copyRunMaximumBytes, and the queue's
   * size): one read and one write of consecutive slots, where a chunk at a time cost a system call
   * pair each (direct writes of 1 MiB move 10–40 % more a second than of 256 KiB on this disk).
   * Returns that copy (none when nothing is to wait for) and how many chunks from `i` it covers.
   */
  #ensureCopiedFrom(i: number, last: number): { copy: Promise<void> | undefined; count: number } {
    const { chunks } = this;
    const state = chunks.state[i];
    // Kept, failed, or discarded (nobody reads its original any more): nothing to copy.
    if (state === ChunkState.Stored || state === ChunkState.Failed || state === ChunkState.Discarded) return { copy: undefined, count: 1 };
    const inFlight = this.#copies.get(i);
    if (inFlight) return { copy: inFlight, count: 1 };
    if (this.#health.error || this.#isStopped) return { copy: undefined, count: 1 }; // corrupted or destroyed: copy-on-write has stopped
    // Slots given back (discarded chunks) are single: while there are some, a copy takes one chunk.
    const most = this.#diff.hasFreeSlot ? 1 : Math.max(1, Math.min(this.#maximumInQueue, Math.floor(params.copyRunMaximumBytes / chunks.chunkSize)));
    let end = i + 1;
    while (end <= last && end - i < most && chunks.state[end] === ChunkState.Untouched) end++;
    // Atomic: ordered before this write's look at the pins of other threads' reads (#copyRange).
    for (let k = i; k < end; k++) Atomics.store(chunks.state, k, ChunkState.Copying);
    const copy = this.#copy(i, end - i).finally(() => {
      for (let k = i; k < end; k++) this.#copies.delete(k);
    });
    for (let k = i; k < end; k++) this.#copies.set(k, copy);
    return { copy, count: end - i };
  }

  /** Keeps chunks [first, first+count) in consecutive slots. */
  async #copy(first: number, count: number): Promise<void> {
    const { chunks } = this;
    await this.#enterQueue(count);
    const offset = first * chunks.chunkSize;
    const length = chunks.lengthOf(first, count);
    const end = first + count;
    try {
      if (this.#isStopped) {
        // Destroyed while this copy waited for a slot: the originals are of no use any more.
        for (let k = first; k < end; k++) chunks.state[k] = ChunkState.Untouched;
        return;
      }
      const at = await this.#diff.allocate(count * chunks.chunkSize, chunks.chunkSize);
      await this.#diff.keep(this.#origin, offset, length, at);
      for (let k = first; k < end; k++) {
        chunks.slot[k] = at / chunks.chunkSize + (k - first);
        // Atomic: another thread that sees the state also sees the slot.
        Atomics.store(chunks.state, k, ChunkState.Stored);
      }
    } catch (e) {
      for (let k = first; k < end; k++) chunks.state[k] = ChunkState.Failed;
      this.closeReadGate();
      this.#health.corrupt(this.deviceName, toBlkError(e));
    } finally {
      this.#leaveQueue(count);
    }
  }

  /** Waits until `count` more chunks may be held in memory; first come, first served. */
  #enterQueue(count: number): Promise<void> | void {
    if (this.#queueWaiters.length === 0 && this.#inQueue + count <= this.#maximumInQueue) {
      this.#inQueue += count;
      return;
    }
    return new Promise((resolve) => this.#queueWaiters.push({ count, resolve }));
  }

  #leaveQueue(count: number): void {
    this.#inQueue -= count;
    for (let next = this.#queueWaiters[0]; next && this.#inQueue + next.count <= this.#maximumInQueue; next = this.#queueWaiters[0]) {
      this.#queueWaiters.shift();
      this.#inQueue += next.count;
      next.resolve();
    }
  }
}
