// Owns the one error type of the project (BlkError, named by errno) and every errno translation table.
import { constants } from 'node:os';

/** The errno names the daemon produces; each maps to its Linux number through os.constants. */
export type Errno =
  | 'EPERM' | 'ENOENT' | 'ESRCH' | 'EIO' | 'ENXIO' | 'E2BIG' | 'EBADF' | 'EAGAIN' | 'ENOMEM' | 'EACCES'
  | 'EBUSY' | 'EEXIST' | 'ENODEV' | 'ENOTDIR' | 'EISDIR' | 'EINVAL' | 'EFBIG' | 'ENOSPC' | 'EROFS'
  | 'ENOTSUP' | 'EOVERFLOW' | 'ESHUTDOWN' | 'ETIMEDOUT' | 'ECANCELED' | 'ENODATA' | 'EALREADY'
  | 'EPROTO' | 'ECONNRESET' | 'EDQUOT' | 'ENOTCONN' | 'ENOTTY' | 'EOPNOTSUPP' | 'ENOSYS' | 'ECONNREFUSED'
  | 'EHOSTUNREACH';

const errnoNumbers = constants.errno as Readonly<Record<string, number>>;

export function errnoNumber(code: Errno): number {
  return errnoNumbers[code] ?? errnoNumbers.EIO ?? 5;
}

function isErrno(code: unknown): code is Errno {
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) && errnoNumbers[code] !== undefined;
}

/** Name of a Linux errno number, for values that come back from libc through FFI. */
export function errnoName(num: number): Errno {
  for (const [name, value] of Object.entries(errnoNumbers)) {
    if (value === num && isErrno(name)) return name;
  }
  return 'EIO';
}

/**
 * The error every layer throws. `code` is the errno name (as Node's fs errors), the message is
 * lowercase and says what was wrong, `detail` carries the offsets, paths and sizes involved.
 */
export class BlkError extends Error {
  readonly code: Errno;
  readonly errno: number;
  readonly detail: Readonly<Record<string, string | number>> | undefined;

  constructor(code: Errno, message: string, detail?: Readonly<Record<string, string | number>>) {
    super(message);
    this.name = 'BlkError';
    this.code = code;
    this.errno = errnoNumber(code);
    this.detail = detail;
  }

  /** "ENOENT: no device named x": the form the CLI prints and the control API sends. */
  override toString(): string {
    return `${this.code}: ${this.message}`;
  }
}

/** Normalises anything caught from node:*, libc or a peer into a BlkError, keeping errno names. */
export function toBlkError(e: unknown, fallback: Errno = 'EIO'): BlkError {
  if (e instanceof BlkError) return e;
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    const name: Errno = code === 'EWOULDBLOCK' ? 'EAGAIN' : isErrno(code) ? code : fallback;
    const message = e.message.replace(/^E[A-Z]+:\s*/, '');
    return new BlkError(name, message);
  }
  return new BlkError(fallback, String(e));
}

// NBD error values are Linux errno numbers, but the protocol allows only a few of them.
// nbdkit's mapping: space errors -> ENOSPC, permission -> EPERM, the rest -> EINVAL/EIO.
const NBD_ALLOWED = new Set<Errno>(['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN']);

/** The NBD error number to send for an error. */
export function toNbdErrno(e: BlkError): number {
  let code: Errno = e.code;
  if (code === 'EDQUOT' || code === 'EFBIG') code = 'ENOSPC';
  else if (code === 'EROFS' || code === 'EACCES') code = 'EPERM';
  else if (code === 'EOPNOTSUPP') code = 'ENOTSUP';
  else if (code === 'ECANCELED' || code === 'ENODEV' || code === 'ENXIO') code = 'EIO';
  else if (!NBD_ALLOWED.has(code)) code = 'EINVAL';
  return errnoNumber(code);
}

/** Exit status of the CLI for an error: the errno number, capped into the 1..125 range. */
export function toExitStatus(e: BlkError): number {
  return Math.min(Math.max(e.errno, 1), 125);
}
