// Owns a file written front to back (a repository's pack) past the page cache where the filesystem
// allows: appends gather in an aligned buffer that leaves by O_DIRECT writes in whole blocks.
// Synchronous on purpose: it runs in worker threads.
import * as fs from 'node:fs';
import { BlkError, toBlkError } from '../errors.js';
import { startWriteback } from './writeback-range.js';
import { alignedBuffer, DIRECT_ALIGNMENT } from './koffi.js';

/** Bytes gathered before a direct write. */
const STAGE_BYTES = 4 * 1024 * 1024;
/** Bytes appended by buffered writes between two starts of their writeback. */
const WRITEBACK_STEP = 8 * 1024 * 1024;

/**
 * A new file filled by appends. On a VM whose freed memory goes back to the host, each new
 * page-cache page costs a fault there (docs/performance.md, session 9), and a pack is written once
 * and not read again soon: so its bytes go to the disk by O_DIRECT, gathered into blocks here.
 * Where O_DIRECT is refused (EINVAL: tmpfs before Linux 6.6, ramfs), buffered writes whose
 * writeback starts as the file grows, so the final fdatasync waits for the tail only.
 */
export class AppendFile {
  readonly path: string;
  /** Bytes appended so far: the file's length once finished. */
  size = 0;
  #fd: number;
  #directFd: number | null;
  #stage: Buffer | null;
  /** Bytes of #stage not yet written; the stage holds file bytes from #stageStart. */
  #staged = 0;
  #stageStart = 0;
  #writtenBackTo = 0;

  private constructor(path: string) {
    this.path = path;
    this.#fd = fs.openSync(path, 'w', 0o644);
    this.#directFd = openDirect(path);
    this.#stage = this.#directFd === null ? null : alignedBuffer(STAGE_BYTES);
  }

  /** Opens `path` anew (truncated); a filesystem that opens O_DIRECT but refuses its writes gets buffered ones. */
  static create(path: string): AppendFile {
    const file = new AppendFile(path);
    if (file.#stage) {
      // Some filesystems (FUSE ones, for instance) open with O_DIRECT and fail the first write.
      file.#stage.fill(0, 0, DIRECT_ALIGNMENT);
      try {
        file.#writeDirect(DIRECT_ALIGNMENT);
      } catch (e) {
        if ((e as BlkError).code !== 'EINVAL') {
          file.close();
          throw e;
        }
        fs.closeSync(file.#directFd as number);
        file.#directFd = null;
        file.#stage = null;
      }
    }
    return file;
  }

  get isDirect(): boolean {
    return this.#directFd !== null;
  }

  append(data: Uint8Array): void {
    if (!this.#stage) {
      writeAll(this.#fd, data, this.size);
      this.size += data.length;
      this.#startWriteback();
      return;
    }
    for (let done = 0; done < data.length; ) {
      if (this.#staged === this.#stage.length) this.#flush();
      const n = Math.min(data.length - done, this.#stage.length - this.#staged);
      this.#stage.set(data.subarray(done, done + n), this.#staged);
      this.#staged += n;
      done += n;
    }
    this.size += data.length;
  }

  /**
   * Appends what `fill` writes into a view of at least `maximum` bytes, in place when staging (no
   * copy): `fill` returns how many bytes it wrote.
   */
  appendInPlace(maximum: number, fill: (into: Buffer) => number): void {
    if (!this.#stage || maximum > this.#stage.length - DIRECT_ALIGNMENT) {
      const scratch = Buffer.allocUnsafe(maximum);
      this.append(scratch.subarray(0, fill(scratch)));
      return;
    }
    if (this.#stage.length - this.#staged < maximum) this.#flush();
    const n = fill(this.#stage.subarray(this.#staged, this.#staged + maximum));
    this.#staged += n;
    this.size += n;
  }

  /** Makes every byte appended durable (the last block's padding cut off) and closes the file. */
  finish(): void {
    try {
      if (this.#stage) {
        const end = Math.ceil(this.#staged / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
        this.#stage.fill(0, this.#staged, end);
        if (end > 0) this.#writeDirect(end);
        fs.ftruncateSync(this.#fd, this.size);
      }
      fs.fdatasyncSync(this.#fd);
    } finally {
      this.close();
    }
  }

  /** Closes without making anything durable (a failed write: the file is removed after). */
  close(): void {
    if (this.#directFd !== null) fs.closeSync(this.#directFd);
    this.#directFd = null;
    if (this.#fd >= 0) fs.closeSync(this.#fd);
    this.#fd = -1;
  }

  /** Writes the stage's whole blocks; the partial last block moves to the front of the stage. */
  #flush(): void {
    const stage = this.#stage as Buffer;
    const whole = Math.floor(this.#staged / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
    if (whole === 0) return;
    this.#writeDirect(whole);
    stage.copy(stage, 0, whole, this.#staged);
    this.#stageStart += whole;
    this.#staged -= whole;
  }

  #writeDirect(length: number): void {
    const stage = this.#stage as Buffer;
    let done = 0;
    try {
      while (done < length) done += fs.writeSync(this.#directFd as number, stage, done, length - done, this.#stageStart + done);
    } catch (e) {
      const error = toBlkError(e);
      throw new BlkError(error.code, `direct write of ${length} bytes at ${this.#stageStart} to ${this.path}: ${error.message}`);
    }
  }

  #startWriteback(): void {
    if (this.size - this.#writtenBackTo < WRITEBACK_STEP) return;
    startWriteback(this.#fd, this.#writtenBackTo, this.size - this.#writtenBackTo);
    this.#writtenBackTo = this.size;
  }
}

/** A second descriptor of `path` with O_DIRECT, or null where the filesystem refuses it. */
function openDirect(path: string): number | null {
  try {
    return fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') return null;
    throw e;
  }
}

export function writeAll(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, position + done);
}
