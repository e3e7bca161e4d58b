// Owns writing a file's new contents beside it and putting them in place only when they are whole:
// an unnamed file (O_TMPFILE) in the same directory, linked and renamed over the old one at commit.
// Until then the old file is untouched, and a failure or a kill -9 leaves nothing behind.
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { toBlkError } from '../errors.js';
import { openAsync } from './async-fs.js';
import { linkDescriptor } from './libc.js';
import { syncDirectory } from './state-file.js';

const O_TMPFILE = 0o20200000;

export class ReplacementFile {
  /** The file the new contents will replace (or make): a symlink's target, not the symlink. */
  readonly target: string;
  readonly fd: number;
  /** A named temporary file, where the filesystem has no O_TMPFILE; null for an unnamed one. */
  #tempName: string | null;
  #isDone = false;

  private constructor(target: string, fd: number, tempName: string | null) {
    this.target = target;
    this.fd = fd;
    this.#tempName = tempName;
  }

  /** Starts the replacement of `file`, with the old file's mode and owner where there is one. */
  static async create(file: string): Promise<ReplacementFile> {
    const target = await fs.promises.realpath(file).catch(() => path.resolve(file));
    const old = await fs.promises.stat(target).catch(() => null);
    const mode = old ? old.mode & 0o7777 : 0o644;
    const dir = path.dirname(target);
    let fd: number;
    let tempName: string | null = null;
    try {
      fd = await openAsync(dir, O_TMPFILE | fs.constants.O_RDWR, mode);
    } catch (e) {
      const code = toBlkError(e).code;
      if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP' && code !== 'EISDIR' && code !== 'EINVAL') throw e;
      tempName = path.join(dir, `.${path.basename(target)}.restoring-${process.pid}-${randomBytes(4).toString('hex')}`);
      fd = await openAsync(tempName, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, mode);
    }
    if (old) {
      fs.fchmodSync(fd, mode);
      if (process.getuid?.() === 0) fs.fchownSync(fd, old.uid, old.gid);
    }
    return new ReplacementFile(target, fd, tempName);
  }

  /** A path that opens this very file again (O_DIRECT, say). */
  get reopenPath(): string {
    return this.#tempName ?? `/proc/self/fd/${this.fd}`;
  }

  /** Makes the contents durable, then puts them in place of the target, atomically. */
  async commit(): Promise<void> {
    await new Promise<void>((resolve, reject) => fs.fsync(this.fd, (e) => (e ? reject(e) : resolve())));
    let named = this.#tempName;
    if (named === null) {
      named = path.join(path.dirname(this.target), `.${path.basename(this.target)}.restored-${process.pid}-${randomBytes(4).toString('hex')}`);
      linkDescriptor(this.fd, named);
    }
    try {
      await fs.promises.rename(named, this.target);
    } catch (e) {
      await fs.promises.rm(named, { force: true });
      throw e;
    }
    this.#isDone = true;
    await syncDirectory(path.dirname(this.target));
  }

  /** Closes the descriptor; without a commit the new contents vanish (a named temporary file is removed). */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => fs.close(this.fd, () => resolve()));
    if (!this.#isDone && this.#tempName !== null) await fs.promises.rm(this.#tempName, { force: true });
  }
}
