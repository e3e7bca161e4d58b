// Owns a file written front to back (a repository's pack) past the page cache where the filesystem
// allows: appends gather in an aligned buffer that leaves by O_DIRECT writes in whole blocks.
// Synchronous on purpose: it runs in worker threads.
import * as fs from 'node:fs';
import { BlkError, toBlkError } from '../errors.js';
import { openDirectSync, writeFullySync } from './fd-io.js';
import { alignedBuffer, DIRECT_ALIGNMENT } from './koffi.js';
import { startWriteback } from './writeback-range.js';

/** Bytes gathered before a direct write. */
const STAGE_BYTES = 4 * 1024 * 1024;
/** Bytes appended by buffered writes between two starts of their writeback. */
const WRITEBACK_STEP = 8 * 1024 * 1024;

/**
 * A new file filled by appends. On a VM whose freed memory goes back to the host, each new
 * page-cache page costs a fault there (docs/performance.md), and a pack is written once
 * and not read again soon: so its bytes go to the disk by O_DIRECT, gathered into blocks here.
 * Where O_DIRECT is refused (EINVAL: tmpfs before Linux 6.6, ramfs), buffered writes whose
 * writeback starts as the file grows, so the final fdatasync waits for the tail only.
 */
export class AppendFile {
  readonly path: string;
  /** Bytes appended so far: the file's length once finished. */
  size = 0;
  #fd: number;
  /** The O_DIRECT descriptor and the aligned buffer appends gather in; null: buffered writes. */
  #direct: { fd: number; stage: Buffer } | null;
  /** Bytes of the stage not yet written; the stage holds file bytes from #stageStart. */
  #staged = 0;
  #stageStart = 0;
  #writtenBackTo = 0;
  /** Where appendInPlace fills when writing through the page cache; kept for the next. */
  #scratch = Buffer.alloc(0);

  private constructor(path: string) {
    this.path = path;
    this.#fd = fs.openSync(path, 'w', 0o644);
    const directFd = openDirectSync(path, fs.constants.O_WRONLY);
    this.#direct = directFd === null ? null : { fd: directFd, stage: alignedBuffer(STAGE_BYTES) };
  }

  /** Opens `path` anew (truncated); a filesystem that opens O_DIRECT but refuses its writes gets buffered ones. */
  static create(path: string): AppendFile {
    const file = new AppendFile(path);
    const direct = file.#direct;
    if (direct) {
      // Some filesystems (FUSE ones, for instance) open with O_DIRECT and fail the first write.
      direct.stage.fill(0, 0, DIRECT_ALIGNMENT);
      try {
        file.#writeDirect(direct, DIRECT_ALIGNMENT);
      } catch (e) {
        if ((e as BlkError).code !== 'EINVAL') {
          file.close();
          throw e;
        }
        fs.closeSync(direct.fd);
        file.#direct = null;
      }
    }
    return file;
  }

  get isDirect(): boolean {
    return this.#direct !== null;
  }

  append(data: Uint8Array): void {
    const direct = this.#direct;
    if (!direct) {
      writeFullySync(this.#fd, data, this.size);
      this.size += data.length;
      this.#startWriteback();
      return;
    }
    const { stage } = direct;
    for (let done = 0; done < data.length; ) {
      if (this.#staged === stage.length) this.#flush(direct);
      const n = Math.min(data.length - done, stage.length - this.#staged);
      stage.set(data.subarray(done, done + n), this.#staged);
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
    const direct = this.#direct;
    if (!direct || maximum > direct.stage.length - DIRECT_ALIGNMENT) {
      if (this.#scratch.length < maximum) this.#scratch = Buffer.allocUnsafe(maximum);
      this.append(this.#scratch.subarray(0, fill(this.#scratch.subarray(0, maximum))));
      return;
    }
    if (direct.stage.length - this.#staged < maximum) this.#flush(direct);
    const n = fill(direct.stage.subarray(this.#staged, this.#staged + maximum));
    this.#staged += n;
    this.size += n;
  }

  /** Makes every byte appended durable (the last block's padding cut off) and closes the file. */
  finish(): void {
    try {
      const direct = this.#direct;
      if (direct) {
        const end = Math.ceil(this.#staged / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
        direct.stage.fill(0, this.#staged, end);
        if (end > 0) this.#writeDirect(direct, end);
        fs.ftruncateSync(this.#fd, this.size);
      }
      fs.fdatasyncSync(this.#fd);
    } finally {
      this.close();
    }
  }

  /** Closes without making anything durable (a failed write: the file is removed after). */
  close(): void {
    if (this.#direct) fs.closeSync(this.#direct.fd);
    this.#direct = null;
    if (this.#fd >= 0) fs.closeSync(this.#fd);
    this.#fd = -1;
  }

  /** Writes the stage's whole blocks; the partial last block moves to the front of the stage. */
  #flush(direct: { fd: number; stage: Buffer }): void {
    const whole = Math.floor(this.#staged / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
    if (whole === 0) return;
    this.#writeDirect(direct, whole);
    direct.stage.copy(direct.stage, 0, whole, this.#staged);
    this.#stageStart += whole;
    this.#staged -= whole;
  }

  /** Writes the stage's first `length` bytes (whole blocks) where they belong in the file. */
  #writeDirect(direct: { fd: number; stage: Buffer }, length: number): void {
    try {
      writeFullySync(direct.fd, direct.stage.subarray(0, length), this.#stageStart);
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
