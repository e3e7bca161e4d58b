// Owns pipes that carry file data to a socket without a copy in this process: splice(2) from an
// O_DIRECT descriptor reads the disk straight into fresh kernel pages in the pipe (Linux 6.5+,
// copy_splice_read), and splice(2) from the pipe to a Unix socket hands those pages over. The
// sender's copy into the socket goes (docs/performance.md, design choices).
import { BlkError, errnoName } from '../errors.js';
import { koffi } from './koffi.js';
import { closeUnmanaged, readRaw } from './libc.js';

const libc = koffi.load('libc.so.6');
const spliceFn = libc.func('int64_t splice(int fdIn, _Inout_ int64_t *offIn, int fdOut, _Inout_ int64_t *offOut, size_t length, unsigned int flags)');
const pipe2Fn = libc.func('int pipe2(_Out_ int *fds, int flags)');
const fcntlFn = libc.func('int fcntl(int fd, int cmd, int arg)');

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
const SPLICE_F_MOVE = 1;
const SPLICE_F_NONBLOCK = 2;
const EAGAIN = 11;

/** A pipe whose pages carry one range from a file to a socket. */
export interface SplicePipe {
  readonly readFd: number;
  readonly writeFd: number;
  /** What the pipe holds at most. */
  readonly capacity: number;
}

/**
 * A pipe of `capacity` bytes (non-blocking ends); 'too small' when the kernel gives less (pipe-max-size),
 * null when it gives none (out of descriptors).
 */
export function openPipe(capacity: number): SplicePipe | 'too small' | null {
  const fds = [0, 0];
  if (pipe2Fn(fds, O_NONBLOCK | O_CLOEXEC) !== 0) return null;
  const [readFd, writeFd] = fds as [number, number];
  const got = fcntlFn(writeFd, F_SETPIPE_SZ, capacity) as number;
  if (got < capacity) {
    closePipe({ readFd, writeFd, capacity: got });
    return 'too small';
  }
  return { readFd, writeFd, capacity: got };
}

export function closePipe(pipe: SplicePipe): void {
  closeUnmanaged(pipe.readFd);
  closeUnmanaged(pipe.writeFd);
}

/**
 * One splice(2) in the thread pool, `offset` on the file's side (`toPipe`: from the file into the
 * pipe, else from the pipe into the file); resolves with its result. errno is the pool thread's:
 * koffi does not carry it back, so a failure (negative) says nothing of why.
 */
function spliceInPool(fileFd: number, offset: number, pipe: SplicePipe, length: number, toPipe: boolean): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const done = (err: unknown, rc: unknown): void => (err ? reject(new BlkError('EIO', `splice of ${length} bytes at ${offset}: ${String(err)}`)) : resolve(Number(rc)));
    if (toPipe) spliceFn.async(fileFd, [offset], pipe.writeFd, null, length, SPLICE_F_MOVE, done);
    else spliceFn.async(pipe.readFd, null, fileFd, [offset], length, SPLICE_F_MOVE, done);
  });
}

/**
 * Fills the pipe with `length` bytes of `fileFd` from `offset`, in the thread pool (it waits for the
 * disk). With an O_DIRECT descriptor the disk reads into fresh pages, past the page cache.
 */
export async function spliceFromFile(fileFd: number, offset: number, pipe: SplicePipe, length: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const n = await spliceInPool(fileFd, offset + done, pipe, length - done, true);
    if (n < 0) throw new BlkError('EIO', `splice of ${length} bytes at ${offset} into a pipe failed`);
    if (n === 0) throw new BlkError('EIO', `splice of ${length} bytes at ${offset}: the file ends after ${done} bytes`);
    done += n;
  }
}

/**
 * Moves `length` bytes the pipe holds to `fileFd` at `offset`, in the thread pool (it waits for the
 * disk). To an O_DIRECT descriptor the disk writes straight from the pipe's pages: page-cache pages
 * spliced in from another file leave with no copy.
 */
export async function spliceToFile(pipe: SplicePipe, fileFd: number, offset: number, length: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const n = await spliceInPool(fileFd, offset + done, pipe, length - done, false);
    if (n <= 0) throw new BlkError('EIO', `splice of ${length} bytes from a pipe to ${offset} failed after ${done} bytes`);
    done += n;
  }
}

/**
 * Adds `length` bytes of `fileFd` from `offset` to the pipe in this thread: references to the page
 * cache's pages, no copy. For worker threads, on cached ranges (it waits for a disk otherwise); false
 * when the file ends first or the pipe is full, with what was added left in the pipe (emptyPipe).
 */
export function spliceFileToPipe(fileFd: number, offset: number, pipe: SplicePipe, length: number): boolean {
  for (let done = 0; done < length; ) {
    const n = Number(spliceFn(fileFd, [offset + done], pipe.writeFd, null, length - done, SPLICE_F_MOVE));
    if (n <= 0) return false;
    done += n;
  }
  return true;
}

/** Moves what the pipe holds to a non-blocking descriptor (a socket, /dev/fuse), up to `length` bytes; the bytes moved (0 when it is full). */
export function spliceFromPipe(pipe: SplicePipe, toFd: number, length: number): number {
  const n = Number(spliceFn(pipe.readFd, null, toFd, null, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK));
  if (n >= 0) return n;
  const errno = koffi.errno();
  if (errno === EAGAIN) return 0;
  throw new BlkError(errnoName(errno), `splice of ${length} bytes from a pipe to descriptor ${toFd} failed`);
}

/** Moves up to `length` bytes the pipe holds to a non-blocking descriptor until it is done or full; the bytes moved. */
export function spliceFromPipeUntilFull(pipe: SplicePipe, toFd: number, length: number): number {
  let moved = 0;
  for (let n = 1; moved < length && n > 0; moved += n) n = spliceFromPipe(pipe, toFd, length - moved);
  return moved;
}

/** Reads and drops whatever the pipe holds, into `scratch` piece by piece (it does not wait). */
export function emptyPipe(pipe: SplicePipe, scratch: Uint8Array): void {
  while (readRaw(pipe.readFd, scratch) > 0);
}

/** Reads `into.length` bytes that the pipe holds (they are there: it does not wait). */
export function drainPipe(pipe: SplicePipe, into: Uint8Array): void {
  let done = 0;
  while (done < into.length) {
    const n = readRaw(pipe.readFd, into.subarray(done));
    if (n <= 0) throw new BlkError(n < 0 ? errnoName(-n) : 'EIO', `a pipe held ${done} of ${into.length} bytes`);
    done += n;
  }
}

/** Pipes kept empty between uses, and a bound on those in use; a range larger than their capacity goes another way. */
export class PipePool {
  readonly capacity: number;
  #free: SplicePipe[] = [];
  #inUse = 0;
  #isUnavailable = false;
  readonly #maximumKept: number;
  readonly #maximumInUse: number;

  constructor(capacity: number, maximumKept: number, maximumInUse: number) {
    this.capacity = capacity;
    this.#maximumKept = maximumKept;
    this.#maximumInUse = maximumInUse;
  }

  /** An empty pipe; null when as many are in use as allowed, or the kernel gives none that large (then it is not asked again). */
  acquire(): SplicePipe | null {
    if (this.#inUse >= this.#maximumInUse || this.#isUnavailable) return null;
    let pipe = this.#free.pop() ?? null;
    if (!pipe) {
      const opened = openPipe(this.capacity);
      if (opened === 'too small') this.#isUnavailable = true;
      pipe = typeof opened === 'string' ? null : opened;
    }
    if (pipe) this.#inUse++;
    return pipe;
  }

  /** Takes back a pipe that holds nothing. */
  release(pipe: SplicePipe): void {
    this.#inUse--;
    if (this.#free.length < this.#maximumKept) this.#free.push(pipe);
    else closePipe(pipe);
  }

  /** Takes back a pipe that may still hold bytes (a failed splice): it is closed. */
  discard(pipe: SplicePipe): void {
    this.#inUse--;
    closePipe(pipe);
  }
}
