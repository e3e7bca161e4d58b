// Owns the libc calls Node lacks (fallocate, lseek SEEK_DATA/SEEK_HOLE, ioctl, flock, posix_fadvise), through koffi.
import { BlkError, errnoName } from '../errors.js';
import { type KoffiFunction, koffi } from './koffi.js';

const libc = koffi.load('libc.so.6');

const fallocateFn = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
const closeFn = libc.func('int close(int fd)');
const lseekFn = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
const flockFn = libc.func('int flock(int fd, int operation)');
const fadviseFn = libc.func('int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)');
const ioctlU64Fn = libc.func('int ioctl(int fd, unsigned long request, _Out_ uint64_t *value)');
const ioctlPointerFn = libc.func('int ioctl(int fd, unsigned long request, void *arg)');
const setsockoptFn = libc.func('int setsockopt(int fd, int level, int name, _In_ int *value, uint32_t length)');
// The iovec is built by hand in `iovec` below: koffi marshalling a struct per call cost a third of
// a cached 4 KiB read (docs/performance.md).
const preadv2Fn = libc.func('int64_t preadv2(int fd, void *iov, int iovcnt, int64_t offset, int flags)');
const memmoveFn = libc.func('uintptr_t memmove(void *to, void *from, size_t length)');
const sendfileFn = libc.func('int64_t sendfile(int outFd, int inFd, _Inout_ int64_t *offset, size_t count)');
const copyFileRangeFn = libc.func('int64_t copy_file_range(int inFd, _Inout_ int64_t *inOffset, int outFd, _Inout_ int64_t *outOffset, size_t length, unsigned int flags)');
const syscallFn = libc.func('long syscall(long number, ...)');
const syncfsFn = libc.func('int syncfs(int fd)');
const ioctlIntFn = libc.func('int ioctl(int fd, unsigned long request, _Out_ int *value)');
const dupFn = libc.func('int dup(int fd)');
const prctlFn = libc.func('int prctl(int option, ...)');

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
const SEEK_END = 2;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const POSIX_FADV_RANDOM = 1;
const POSIX_FADV_WILLNEED = 3;
const BLKGETSIZE64 = 0x80081272;
const RWF_NOWAIT = 0x08;
const FIFREEZE = 0xc0045877;
const FITHAW = 0xc0045878;
const PR_SET_PDEATHSIG = 1;
const SIGTERM = 15;
const FS_IOC_FIEMAP = 0xc020660b;
const FIEMAP_FLAG_SYNC = 1;
const FIEMAP_EXTENT_LAST = 1;
const FIEMAP_HEADER = 32;
const FIEMAP_EXTENT = 56;

function fail(call: string, what: string): BlkError {
  const code = errnoName(koffi.errno());
  return new BlkError(code === 'EAGAIN' ? 'EBUSY' : code, `${call} ${what} failed`);
}

/** Runs a libc call that returns 0 or -1 on a thread-pool thread; rejects with its errno. */
function callAsync(fn: KoffiFunction, args: unknown[], what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, rc: unknown) => {
      if (err) reject(new BlkError('EIO', `${what}: ${String(err)}`));
      else if (rc !== 0) reject(fail(what, ''));
      else resolve();
    });
  });
}

/**
 * close(2) of a descriptor made through the FFI (a pipe, an io_uring): in a worker thread Node's
 * fs.closeSync warns that it never opened it ("closed but not opened in unmanaged mode").
 */
export function closeUnmanaged(fd: number): void {
  closeFn(fd);
}

/** fallocate(2) off the event loop: it may take long on large ranges and block devices. */
export function fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
  return callAsync(fallocateFn, [fd, mode, offset, length], `fallocate at ${offset}+${length}`);
}

/** Next data offset at or after `offset`, or null when only a hole follows (ENXIO). */
export function seekData(fd: number, offset: number): number | null {
  const r = lseekFn(fd, offset, SEEK_DATA) as number;
  if (r >= 0) return r;
  if (koffi.errno() === 6 /* ENXIO */) return null;
  throw fail('lseek(SEEK_DATA)', `at ${offset}`);
}

/** Next hole offset at or after `offset` (the end of the file counts as a hole). */
export function seekHole(fd: number, offset: number): number {
  const r = lseekFn(fd, offset, SEEK_HOLE) as number;
  if (r >= 0) return r;
  throw fail('lseek(SEEK_HOLE)', `at ${offset}`);
}

/** Size in bytes of what fd refers to, block devices included (fstat says 0 for them). */
export function sizeOfBlockDevice(fd: number): number {
  const out = [0];
  if (ioctlU64Fn(fd, BLKGETSIZE64, out) === 0) return Number(out[0]);
  const r = lseekFn(fd, 0, SEEK_END) as number;
  if (r < 0) throw fail('ioctl(BLKGETSIZE64)', '');
  return r;
}

/** Takes an exclusive, non-blocking flock; EBUSY when another open file description holds it. */
/** Makes every file of the filesystem holding `fd` durable at once (syncfs): one call after many writes. */
export function syncFilesystem(fd: number): Promise<void> {
  return callAsync(syncfsFn, [fd], 'syncfs');
}

/** flock(2) without waiting: true when the lock (shared or exclusive) was taken, false when another holds it. */
export function tryLock(fd: number, exclusive: boolean): boolean {
  if ((flockFn(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) as number) === 0) return true;
  const code = errnoName(koffi.errno());
  if (code === 'EAGAIN') return false;
  throw new BlkError(code, 'flock failed');
}

/** tryLock in the thread pool: flock on a network filesystem may wait for the server. */
export function tryLockAsync(fd: number, exclusive: boolean): Promise<boolean> {
  return new Promise((resolve, reject) => {
    flockFn.async(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB, (err: unknown, rc: number) => {
      if (err) return reject(new BlkError('EIO', `flock: ${String(err)}`));
      if (rc === 0) return resolve(true);
      const code = errnoName(koffi.errno());
      if (code === 'EAGAIN') resolve(false);
      else reject(new BlkError(code, 'flock failed'));
    });
  });
}

export function lockExclusive(fd: number, path: string): void {
  if (flockFn(fd, LOCK_EX | LOCK_NB) !== 0) {
    const err = fail('flock', path);
    throw new BlkError(err.code, `${path} is in use by another attach or process`, { path });
  }
}

/** A second descriptor of the same open file (dup(2)), for another owner to close when it is done. */
export function duplicate(fd: number): number {
  const n = dupFn(fd) as number;
  if (n < 0) throw fail('dup', `of descriptor ${fd}`);
  return n;
}

/**
 * No read-ahead on this open file (POSIX_FADV_RANDOM, for every descriptor dup'd from it): a read
 * brings exactly its own pages into the page cache, none past them.
 */
export function adviseNoReadAhead(fd: number): void {
  const errno = fadviseFn(fd, 0, 0, POSIX_FADV_RANDOM) as number; // the error itself, not -1
  if (errno !== 0) throw new BlkError(errnoName(errno), `posix_fadvise(POSIX_FADV_RANDOM) on descriptor ${fd} failed`);
}

/** Asks the kernel to read a range ahead into the page cache, from a worker thread (it only starts the reads); length 0: to the end. */
export function adviseWillNeed(fd: number, offset: number, length: number): void {
  fadviseFn(fd, offset, length, POSIX_FADV_WILLNEED);
}

/** Asks the kernel to read a range ahead into the page cache (NBD_CMD_CACHE). */
export function willNeed(fd: number, offset: number, length: number): Promise<void> {
  return new Promise((resolve) => {
    fadviseFn.async(fd, offset, length, POSIX_FADV_WILLNEED, () => resolve());
  });
}

/**
 * Reads from the page cache only (preadv2 RWF_NOWAIT): returns the bytes read, which is less than
 * asked (possibly 0) when the rest is not cached. It never waits for a disk, so the event loop may
 * call it; the caller reads the remainder through the thread pool.
 */
export function readCached(fd: number, into: Uint8Array, offset: number): number {
  const address = addressOf(into.buffer) + into.byteOffset;
  iovecWords[0] = address % 2 ** 32;
  iovecWords[1] = Math.floor(address / 2 ** 32);
  iovecWords[2] = into.length;
  iovecWords[3] = 0;
  const n = preadv2Fn(fd, iovec, 1, offset, RWF_NOWAIT) as number;
  return Math.max(n , 0);
}

const iovec = Buffer.alloc(16);
const iovecWords = new Uint32Array(iovec.buffer, iovec.byteOffset, 4);
const addresses = new WeakMap<ArrayBufferLike, number>();

/**
 * Where an ArrayBuffer's bytes are. Its backing store never moves (V8 does not move array buffer
 * contents); memmove of 0 bytes returns its destination, which koffi passes as that address.
 */
function addressOf(buffer: ArrayBufferLike): number {
  let address = addresses.get(buffer);
  if (address === undefined) {
    const whole = new Uint8Array(buffer);
    address = Number(memmoveFn(whole, whole, 0));
    addresses.set(buffer, address);
  }
  return address;
}

const SYS_CACHESTAT = 451;
export const PAGE_SIZE = 4096;
const cachestatRange = new BigUint64Array(2);
const cachestatOut = new BigUint64Array(5);
let hasCachestat = true;

/**
 * Whether the page cache holds every page of a range (cachestat(2), Linux 6.5+), so that reading
 * it cannot wait for a disk. False when it does not, or when the kernel cannot tell.
 */
export function isRangeCached(fd: number, offset: number, length: number): boolean {
  if (!hasCachestat || length === 0) return false;
  cachestatRange[0] = BigInt(offset);
  cachestatRange[1] = BigInt(length);
  if ((syscallFn(SYS_CACHESTAT, 'int', fd, 'void *', cachestatRange, 'void *', cachestatOut, 'unsigned int', 0) as number) !== 0) {
    if (koffi.errno() === 38 /* ENOSYS */) hasCachestat = false;
    return false;
  }
  const pages = Math.ceil((offset + length) / PAGE_SIZE) - Math.floor(offset / PAGE_SIZE);
  return Number(cachestatOut[0]) >= pages;
}

const FIONREAD = 0x541b;
const readableCount = [0];

/** Bytes waiting to be read on a socket (FIONREAD); 0 when it cannot tell. */
export function bytesReadable(fd: number): number {
  return ioctlIntFn(fd, FIONREAD, readableCount) === 0 ? (readableCount[0] as number) : 0;
}

const SIOCOUTQ = 0x5411;
const unsentCount = [0];

/**
 * Bytes a socket holds that its peer has not read yet (SIOCOUTQ); -1 when it cannot tell. On a Unix
 * stream socket this counts until the peer has read them (their buffers are freed only then), so
 * 0 means the peer has read everything sent.
 */
export function bytesUnread(fd: number): number {
  return ioctlIntFn(fd, SIOCOUTQ, unsentCount) === 0 ? (unsentCount[0] as number) : -1;
}

const sendfileOffset = [0];

/**
 * sendfile(2): the kernel moves a range of a file to `outFd` without it passing through this
 * process (to a Unix socket it hands over page references, Linux 6.5+). Returns the bytes sent,
 * fewer than asked (possibly 0) when `outFd` is non-blocking and full. Blocks when the range is
 * not cached: check isRangeCached() first on the event loop.
 */
export function sendFile(outFd: number, inFd: number, offset: number, length: number): number {
  sendfileOffset[0] = offset;
  const n = sendfileFn(outFd, inFd, sendfileOffset, length) as number;
  if (n >= 0) return n;
  const errno = koffi.errno();
  if (errno === 11 /* EAGAIN */) return 0;
  throw fail('sendfile', `of ${length} bytes at ${offset}`);
}

const copyInOffset = [0];
const copyOutOffset = [0];
/** Errnos saying the kernel cannot copy between these two descriptors (other filesystems, a block device). */
const COPY_UNSUPPORTED = new Set(['EXDEV', 'EINVAL', 'EOPNOTSUPP', 'ENOSYS', 'EBADF']);

/**
 * copy_file_range(2): copies a range from one file to another inside the kernel (page cache to
 * page cache, one copy, nothing through this process). Returns the bytes copied (fewer than asked
 * only at the end of `inFd`), or null when the kernel cannot copy between these descriptors;
 * throws on I/O errors. Blocks on a disk when the source is not cached: check isRangeCached().
 */
export function copyFileRange(inFd: number, inOffset: number, outFd: number, outOffset: number, length: number): number | null {
  let done = 0;
  while (done < length) {
    copyInOffset[0] = inOffset + done;
    copyOutOffset[0] = outOffset + done;
    const n = copyFileRangeFn(inFd, copyInOffset, outFd, copyOutOffset, length - done, 0) as number;
    if (n > 0) {
      done += n;
      continue;
    }
    if (n === 0) break;
    const code = errnoName(koffi.errno());
    if (done === 0 && COPY_UNSUPPORTED.has(code)) return null;
    throw new BlkError(code, `copy_file_range of ${length} bytes at ${inOffset} failed`);
  }
  return done;
}

/**
 * copy_file_range(2) on a thread-pool thread, for a range that may not be cached: the bytes
 * copied (fewer only at the end of `inFd`), or null when a call failed; the caller then copies by
 * read and write, which report any I/O error with its errno.
 */
export async function copyFileRangeAsync(inFd: number, inOffset: number, outFd: number, outOffset: number, length: number): Promise<number | null> {
  let done = 0;
  while (done < length) {
    const n = await new Promise<number>((resolve) => {
      // Offsets of their own: other copies run at the same time.
      copyFileRangeFn.async(inFd, [inOffset + done], outFd, [outOffset + done], length - done, 0, (err: unknown, rc: unknown) => resolve(err ? -1 : Number(rc)));
    });
    if (n < 0) return null;
    if (n === 0) break;
    done += n;
  }
  return done;
}

/**
 * Freezes (FIFREEZE) or thaws (FITHAW) the filesystem whose mount point `fd` is open on. Off the
 * event loop: a freeze writes back dirty data, which may flow through this very daemon.
 */
export function freezeFilesystem(fd: number, isFreeze: boolean): Promise<void> {
  return callAsync(ioctlPointerFn, [fd, isFreeze ? FIFREEZE : FITHAW, null], isFreeze ? 'FIFREEZE' : 'FITHAW');
}

/** The physical extents of an open file (FS_IOC_FIEMAP, synced first), as byte ranges. */
export async function fileExtents(fd: number): Promise<Array<{ offset: number; length: number }>> {
  const out: Array<{ offset: number; length: number }> = [];
  const perCall = 512;
  const buf = Buffer.alloc(FIEMAP_HEADER + perCall * FIEMAP_EXTENT);
  let start = 0;
  for (;;) {
    buf.fill(0);
    buf.writeBigUInt64LE(BigInt(start), 0);
    buf.writeBigUInt64LE(0xffffffffffffffffn, 8);
    buf.writeUInt32LE(FIEMAP_FLAG_SYNC, 16);
    buf.writeUInt32LE(perCall, 24);
    await callAsync(ioctlPointerFn, [fd, FS_IOC_FIEMAP, buf], 'FS_IOC_FIEMAP');
    const mapped = buf.readUInt32LE(20);
    if (mapped === 0) return out;
    let isLast = false;
    for (let i = 0; i < mapped; i++) {
      const at = FIEMAP_HEADER + i * FIEMAP_EXTENT;
      const logical = Number(buf.readBigUInt64LE(at));
      out.push({ offset: Number(buf.readBigUInt64LE(at + 8)), length: Number(buf.readBigUInt64LE(at + 16)) });
      start = logical + Number(buf.readBigUInt64LE(at + 16));
      if (buf.readUInt32LE(at + 40) & FIEMAP_EXTENT_LAST) isLast = true;
    }
    if (isLast) return out;
  }
}

const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_SNDBUFFORCE = 32;

/**
 * Raises a socket's send buffer (as root past net.core.wmem_max). A whole 1 MiB reply then fits
 * at once, instead of leaving in 200 KiB pieces, one event-loop wake-up each. Best effort.
 */
export function raiseSendBuffer(fd: number, bytes: number): boolean {
  return setsockoptFn(fd, SOL_SOCKET, SO_SNDBUFFORCE, [bytes], 4) === 0 || setsockoptFn(fd, SOL_SOCKET, SO_SNDBUF, [bytes], 4) === 0;
}

const mountFn = libc.func('int mount(const char *source, const char *target, const char *type, unsigned long flags, const char *data)');
const umount2Fn = libc.func('int umount2(const char *target, int flags)');
const readFn = libc.func('int64_t read(int fd, void *buf, size_t count)');
koffi.struct('pollfd', { fd: 'int', events: 'short', revents: 'short' });
const pollFn = libc.func('int poll(_Inout_ pollfd *fds, unsigned long nfds, int timeout)');

const MS_NOSUID = 2;
const MS_NODEV = 4;
const MS_NOATIME = 1024;
const MNT_DETACH = 2;
const POLLIN = 1;

/** mount(2) of a FUSE filesystem served through the /dev/fuse descriptor named in `data`. */
export function mountFuse(target: string, type: string, data: string): void {
  if (mountFn('blksnapd', target, type, MS_NOSUID | MS_NODEV | MS_NOATIME, data) !== 0) throw fail('mount', `of ${type} on ${target}`);
}

/** Lazy unmount (MNT_DETACH): gone from the namespace now, released when its last user closes. */
export function unmountLazy(target: string): void {
  if (umount2Fn(target, MNT_DETACH) !== 0) throw fail('umount2', target);
}

/** read(2) into `into`: the byte count, or minus the errno. Blocking or not as the descriptor is. */
export function readRaw(fd: number, into: Uint8Array): number {
  const n = Number(readFn(fd, into, into.length));
  return n >= 0 ? n : -koffi.errno();
}

/** Waits up to `timeoutMs` for `fd` to be readable; false on timeout. */
export function waitReadable(fd: number, timeoutMs: number): boolean {
  const fds = [{ fd, events: POLLIN, revents: 0 }];
  return (pollFn(fds, 1, timeoutMs) as number) > 0;
}

const eventfdFn = libc.func('int eventfd(unsigned int initial, int flags)');
const EFD_NONBLOCK = 0x800;
const EFD_CLOEXEC = 0x80000;

/** A non-blocking eventfd: one thread bumps it to wake another that polls it. */
export function createEventFd(): number {
  const fd = eventfdFn(0, EFD_NONBLOCK | EFD_CLOEXEC) as number;
  if (fd < 0) throw fail('eventfd', '');
  return fd;
}

/**
 * Asks the kernel for SIGTERM when the process that started this one exits (prctl
 * PR_SET_PDEATHSIG); false if that parent is already gone (then nobody will send it).
 */
export function terminateWithParent(): boolean {
  const parent = process.ppid;
  if ((prctlFn(PR_SET_PDEATHSIG, 'unsigned long', SIGTERM) as number) !== 0) throw fail('prctl', '(PR_SET_PDEATHSIG)');
  return process.ppid === parent && parent !== 1;
}

const getsockoptFn = libc.func('int getsockopt(int fd, int level, int name, _Out_ uint8_t *value, _Inout_ uint32_t *length)');
const SO_PEERCRED = 17;

/** Who is at the other end of a Unix socket (SO_PEERCRED: as it was at connect), or null where the kernel cannot say. */
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } | null {
  const ucred = Buffer.alloc(12);
  const length = [12];
  if ((getsockoptFn(fd, SOL_SOCKET, SO_PEERCRED, ucred, length) as number) !== 0 || length[0] !== 12) return null;
  return { pid: ucred.readInt32LE(0), uid: ucred.readUInt32LE(4), gid: ucred.readUInt32LE(8) };
}

const linkatFn = libc.func('int linkat(int oldDirFd, const char *oldPath, int newDirFd, const char *newPath, int flags)');
const AT_FDCWD = -100;
const AT_SYMLINK_FOLLOW = 0x400;

/**
 * Gives an unnamed file (O_TMPFILE) the name `target`, which must not exist yet, through its
 * /proc/self/fd link (linkat with AT_SYMLINK_FOLLOW: no CAP_DAC_READ_SEARCH needed).
 */
export function linkDescriptor(fd: number, target: string): void {
  if ((linkatFn(AT_FDCWD, `/proc/self/fd/${fd}`, AT_FDCWD, target, AT_SYMLINK_FOLLOW) as number) !== 0) throw fail('linkat', `of descriptor ${fd} to ${target}`);
}
