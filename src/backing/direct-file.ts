// Owns O_DIRECT access to a file store (the difference storage): copies written, uncached kept chunks read, without page-cache pages.
import * as fs from 'node:fs';
import { BlkError, toBlkError } from '../errors.js';
import { closeAsync, openAsync } from '../os/async-fs.js';
import { readAt, readUpTo, writeFully } from '../os/fd-io.js';
import { AlignedBufferPool } from '../os/aligned-pool.js';
import { bytesToAlignment, DIRECT_ALIGNMENT } from '../os/koffi.js';
import { type SplicePipe, spliceToFile } from '../os/splice.js';

const alignDown = (n: number): number => Math.floor(n / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
const alignUp = (n: number): number => Math.ceil(n / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;

/**
 * A second descriptor of a file or block device, opened with O_DIRECT: bytes move between aligned
 * memory and the disk with no page-cache page allocated for them (on a VM whose freed memory goes
 * back to the host, a new page costs more than the disk I/O; docs/performance.md). Writes are for
 * ranges nobody reads yet (a chunk's new slot): safe beside buffered I/O of the same file only while
 * no page of such a range can be in the page cache, so the caller reads nothing of it before the
 * write is done and turns read-ahead off (adviseNoReadAhead), so no read of a neighbour brings it
 * in. Reads are for ranges not in the page cache (the kernel writes dirty pages of the range back
 * first, so a direct read sees them).
 */
export class DirectFile {
  readonly path: string;
  #fd: number;
  /** Aligned buffers for reads not aligned themselves and for writes; a few kept for reuse. */
  #buffers = new AlignedBufferPool(32 * 1024 * 1024);

  /** The O_DIRECT descriptor (splice from it reads past the page cache too). */
  get descriptor(): number {
    return this.#fd;
  }

  private constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  /**
   * Opens `fd`'s file again with O_DIRECT (for reading only unless `writable`) and checks that the
   * filesystem takes a direct read at `probeOffset`; null where it does not (EINVAL: tmpfs before
   * Linux 6.6, some FUSE filesystems).
   */
  static async reopen(path: string, fd: number, probeOffset: number, writable = true): Promise<DirectFile | null> {
    let directFd: number;
    try {
      directFd = await openAsync(`/proc/self/fd/${fd}`, (writable ? fs.constants.O_RDWR : fs.constants.O_RDONLY) | fs.constants.O_DIRECT);
    } catch (e) {
      if (toBlkError(e).code === 'EINVAL') return null;
      throw new BlkError(toBlkError(e).code, `cannot open ${path} for direct I/O: ${toBlkError(e).message}`);
    }
    const file = new DirectFile(path, directFd);
    try {
      const probe = file.#buffers.acquire(DIRECT_ALIGNMENT);
      try {
        await readAt(directFd, probe, probeOffset);
      } finally {
        file.#buffers.release(probe);
      }
      return file;
    } catch (e) {
      await closeAsync(directFd);
      if (toBlkError(e).code === 'EINVAL') return null;
      throw toBlkError(e);
    }
  }

  /**
   * Fills `into` from `offset`, any alignment (the aligned range around it is read, the part asked
   * for copied out), past the page cache: a range whose pages are not cached is read from the disk
   * without allocating pages for it. Dirty cached pages of the range are written back first by the
   * kernel, so the read sees them.
   */
  async read(offset: number, into: Uint8Array): Promise<void> {
    const start = alignDown(offset);
    const end = alignUp(offset + into.length);
    const isAligned = start === offset && end === offset + into.length && bytesToAlignment(into, DIRECT_ALIGNMENT) === 0;
    const target = isAligned ? into : this.#buffers.acquire(end - start);
    try {
      let done: number;
      try {
        done = await readUpTo(this.#fd, target, start); // a short direct read ends on a block boundary: the rest stays aligned
      } catch (e) {
        throw new BlkError(toBlkError(e).code, `direct read of ${target.length} bytes at ${start} from ${this.path}: ${toBlkError(e).message}`);
      }
      if (done < target.length) throw new BlkError('EIO', `short read from ${this.path}: ${done} of ${target.length} bytes at ${start}`);
      if (!isAligned) into.set(target.subarray(offset - start, offset - start + into.length));
    } finally {
      if (!isAligned) this.#buffers.release(target as Buffer);
    }
  }

  /**
   * Fills `length` bytes for `offset` by `fill` (called with an aligned buffer of exactly `length`
   * bytes) and writes them, padded with zeroes to a whole block.
   */
  async writeFrom(offset: number, length: number, fill: (into: Buffer) => Promise<void>): Promise<void> {
    if (offset % DIRECT_ALIGNMENT !== 0) throw new BlkError('EINVAL', `direct write at ${offset} to ${this.path}: not ${DIRECT_ALIGNMENT}-byte aligned`);
    const buffer = this.#buffers.acquire(alignUp(length));
    try {
      await fill(buffer.subarray(0, length));
      buffer.fill(0, length);
      try {
        await writeFully(this.#fd, buffer, offset);
      } catch (e) {
        throw new BlkError(toBlkError(e).code, `direct write of ${buffer.length} bytes at ${offset} to ${this.path}: ${toBlkError(e).message}`);
      }
    } finally {
      this.#buffers.release(buffer);
    }
  }

  /**
   * Writes the `length` bytes a pipe holds at `offset` (both aligned), the disk reading them from the
   * pipe's pages: no copy in this process, nor in the kernel.
   */
  async writeFromPipe(pipe: SplicePipe, offset: number, length: number): Promise<void> {
    if (offset % DIRECT_ALIGNMENT !== 0 || length % DIRECT_ALIGNMENT !== 0) throw new BlkError('EINVAL', `direct write of ${length} bytes at ${offset} to ${this.path}: not ${DIRECT_ALIGNMENT}-byte aligned`);
    try {
      await spliceToFile(pipe, this.#fd, offset, length);
    } catch (e) {
      throw new BlkError(toBlkError(e).code, `direct write of ${length} bytes at ${offset} to ${this.path}: ${toBlkError(e).message}`);
    }
  }

  async close(): Promise<void> {
    await closeAsync(this.#fd);
  }
}
