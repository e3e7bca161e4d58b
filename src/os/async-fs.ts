// Owns the file calls made on paths a client gave: in the thread pool, never on the event loop, since such
// a path may lie where only this event loop serves the blocks.
import * as fs from 'node:fs';
import { BlkError, toBlkError } from '../errors.js';
import { fileExtents, freezeFilesystem } from './libc.js';

/** open(2) in the thread pool. */
export function openAsync(path: string, flags: number, mode = 0o600): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, mode, (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** fstat(2) in the thread pool. */
export function fstatAsync(fd: number): Promise<fs.Stats> {
  return new Promise((resolve, reject) => fs.fstat(fd, (err, st) => (err ? reject(err) : resolve(st))));
}

// O_TMPFILE | O_DIRECTORY: an unnamed file in a directory, gone when closed; nobody else can open it.
const O_TMPFILE = 0o20200000;

/** An unnamed file in `dir` (O_TMPFILE), read-write, mode 0600. */
export function openUnnamedFile(dir: string): Promise<number> {
  return openAsync(dir, O_TMPFILE | fs.constants.O_RDWR, 0o600);
}

/**
 * The physical extents of `file`, which must lie on a filesystem mounted from `blockDevice`, as
 * byte ranges of that device (FIEMAP). EINVAL when it lies elsewhere.
 */
export async function fileExtentsOn(file: string, blockDevice: string): Promise<Array<{ offset: number; length: number }>> {
  let fd: number;
  try {
    // Non-blocking: a FIFO's open would wait for a writer, and hold a thread-pool thread meanwhile.
    fd = await openAsync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    throw new BlkError(toBlkError(e).code, `cannot open ${file}: ${toBlkError(e).message}`);
  }
  try {
    const st = await fstatAsync(fd);
    if (!st.isFile()) throw new BlkError('EINVAL', `${file} is ${kindOf(st)}, not a regular file: only a file has extents on the device`);
    if (st.dev !== fs.statSync(blockDevice).rdev) throw new BlkError('EINVAL', `${file} is not on a filesystem mounted from ${blockDevice}`);
    return await fileExtents(fd);
  } finally {
    await closeAsync(fd);
  }
}

function kindOf(st: fs.Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isDirectory()) return 'a directory';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Freezes the filesystem mounted at `mountPoint` (FIFREEZE) and resolves with its thaw. Opened and
 * frozen off the event loop: the freeze writes back dirty data, which may flow through this daemon.
 */
export async function freezeMountPoint(mountPoint: string): Promise<() => Promise<void>> {
  const fd = await openAsync(mountPoint, fs.constants.O_RDONLY);
  try {
    await freezeFilesystem(fd, true);
  } catch (e) {
    await closeAsync(fd);
    throw e;
  }
  return async () => {
    try {
      await freezeFilesystem(fd, false);
    } finally {
      await closeAsync(fd);
    }
  };
}

/** close(2) in the thread pool; errors are of no use to a caller that is done with the file. */
export function closeAsync(fd: number): Promise<void> {
  return new Promise((resolve) => fs.close(fd, () => resolve()));
}
