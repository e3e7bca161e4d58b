// Owns O_DIRECT access to a file store (the difference storage): aligned reads and writes that bypass the page cache.
import * as fs from 'node:fs';
import { BlkError, toBlkError } from '../errors.js';
import { closeAsync, openAsync } from '../os/async-fs.js';
import { readAt, writeFully } from '../os/fd-io.js';
import { bytesToAlignment } from '../os/koffi.js';
import { RangeLock } from '../util/range-lock.js';

/** Offsets, lengths and buffer addresses of direct I/O: the largest logical block size in use. */
export const DIRECT_ALIGNMENT = 4096;

const alignDown = (n: number): number => Math.floor(n / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
const alignUp = (n: number): number => Math.ceil(n / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;

/**
 * A second descriptor of a file or block device, opened with O_DIRECT: its bytes move between
 * aligned memory and the disk, with no page-cache pages allocated (on a VM whose freed memory goes
 * back to the host, new page-cache pages cost more than the disk write; docs/performance.md).
 * Every access to the file must come through here: a buffered read of the same range could cache
 * pages that a direct write then leaves stale. Writes that do not cover whole aligned blocks are
 * read-modify-write, one at a time per block (RangeLock), so two of them never lose each other's bytes.
 */
export class DirectFile {
  readonly path: string;
  #fd: number;
  #blocks = new RangeLock();
  /** Aligned scratch buffers, by size; a few kept for reuse (each holds a chunk at most). */
  #free = new Map<number, Buffer[]>();
  #keptBytes = 0;
  static readonly #maximumKeptBytes = 32 * 1024 * 1024;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  /**
   * Opens `fd`'s file again with O_DIRECT and checks that the filesystem takes a direct read of
   * `probeOffset`; null where it does not (EINVAL: tmpfs before Linux 6.6, some FUSE filesystems).
   */
  static async reopen(path: string, fd: number, probeOffset: number): Promise<DirectFile | null> {
    let directFd: number;
    try {
      directFd = await openAsync(`/proc/self/fd/${fd}`, fs.constants.O_RDWR | fs.constants.O_DIRECT);
    } catch (e) {
      if (toBlkError(e).code === 'EINVAL') return null;
      throw new BlkError(toBlkError(e).code, `cannot open ${path} for direct I/O: ${toBlkError(e).message}`);
    }
    const file = new DirectFile(path, directFd);
    try {
      const probe = file.#acquire(DIRECT_ALIGNMENT);
      try {
        await readAt(directFd, probe, probeOffset);
      } finally {
        file.#release(probe);
      }
      return file;
    } catch (e) {
      await closeAsync(directFd);
      if (toBlkError(e).code === 'EINVAL') return null;
      throw toBlkError(e);
    }
  }

  /** Fills `into` from `offset` (any alignment: an aligned superset is read and the range copied out). */
  async read(offset: number, into: Uint8Array): Promise<void> {
    if (into.length === 0) return;
    if (this.#isAligned(offset, into)) return this.#readFully(offset, into);
    const start = alignDown(offset);
    const scratch = this.#acquire(alignUp(offset + into.length) - start);
    try {
      await this.#readFully(start, scratch);
      into.set(scratch.subarray(offset - start, offset - start + into.length));
    } finally {
      this.#release(scratch);
    }
  }

  /** Writes `data` at `offset`; partial blocks at either end are read first and written whole. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (data.length === 0) return;
    const start = alignDown(offset);
    const end = alignUp(offset + data.length);
    const unlock = await this.#blocks.lock(start, end);
    try {
      if (this.#isAligned(offset, data)) return await this.#writeFully(offset, data);
      const scratch = this.#acquire(end - start);
      try {
        // Only the partial end blocks need their old bytes; the middle is overwritten whole.
        if (offset !== start) await this.#readFully(start, scratch.subarray(0, DIRECT_ALIGNMENT));
        const tail = end - DIRECT_ALIGNMENT;
        if (offset + data.length !== end && (tail > start || offset === start)) {
          await this.#readFully(tail, scratch.subarray(tail - start, end - start));
        }
        scratch.set(data, offset - start);
        await this.#writeFully(start, scratch);
      } finally {
        this.#release(scratch);
      }
    } finally {
      unlock();
    }
  }

  /**
   * Fills `length` bytes at `offset` from `fill` (called with an aligned buffer of exactly
   * `length` bytes) and writes them, padded with zeroes to a whole block. For ranges nobody else
   * writes yet (a chunk's new slot): no block lock is taken.
   */
  async writeFrom(offset: number, length: number, fill: (into: Buffer) => Promise<void>): Promise<void> {
    if (offset % DIRECT_ALIGNMENT !== 0) throw new BlkError('EINVAL', `direct write at ${offset}: not ${DIRECT_ALIGNMENT}-byte aligned`);
    const padded = alignUp(length);
    const buffer = this.#acquire(padded);
    try {
      await fill(buffer.subarray(0, length));
      buffer.fill(0, length);
      await this.#writeFully(offset, buffer);
    } finally {
      this.#release(buffer);
    }
  }

  async close(): Promise<void> {
    await closeAsync(this.#fd);
  }

  #isAligned(offset: number, view: Uint8Array): boolean {
    return offset % DIRECT_ALIGNMENT === 0 && view.length % DIRECT_ALIGNMENT === 0 && bytesToAlignment(view, DIRECT_ALIGNMENT) === 0;
  }

  async #readFully(offset: number, into: Uint8Array): Promise<void> {
    for (let done = 0; done < into.length; ) {
      let n: number;
      try {
        n = await readAt(this.#fd, into.subarray(done), offset + done);
      } catch (e) {
        throw new BlkError(toBlkError(e).code, `direct read of ${into.length} bytes at ${offset} from ${this.path}: ${toBlkError(e).message}`);
      }
      if (n === 0) throw new BlkError('EIO', `short read from ${this.path}: ${done} of ${into.length} bytes at ${offset}`);
      // A short direct read ends on a block boundary, so the rest stays aligned.
      done += n;
    }
  }

  async #writeFully(offset: number, data: Uint8Array): Promise<void> {
    try {
      await writeFully(this.#fd, data, offset);
    } catch (e) {
      throw new BlkError(toBlkError(e).code, `direct write of ${data.length} bytes at ${offset} to ${this.path}: ${toBlkError(e).message}`);
    }
  }

  #acquire(length: number): Buffer {
    const kept = this.#free.get(length)?.pop();
    if (kept) {
      this.#keptBytes -= length;
      return kept;
    }
    const raw = Buffer.allocUnsafeSlow(length + DIRECT_ALIGNMENT);
    const skip = bytesToAlignment(raw, DIRECT_ALIGNMENT);
    return raw.subarray(skip, skip + length);
  }

  #release(buffer: Buffer): void {
    if (this.#keptBytes + buffer.length > DirectFile.#maximumKeptBytes) return;
    const list = this.#free.get(buffer.length);
    if (list) list.push(buffer);
    else this.#free.set(buffer.length, [buffer]);
    this.#keptBytes += buffer.length;
  }
}
