// Owns whole reads and writes at an offset, through the thread pool or at once, for code on any
// thread (the file store, the repository's worker threads); plain node:fs, no FFI.
import * as fs from 'node:fs';

/** pwrite(2) of all of `data` at `position` in the thread pool, again after a short write. */
export function writeFully(fd: number, data: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done === data.length) return resolve();
      fs.write(fd, data, done, data.length - done, position + done, (e, n) => (e ? reject(e) : step(done + n)));
    };
    step(0);
  });
}

/** pwrite(2) of all of `data` at `position` at once (this thread waits), again after a short write. */
export function writeFullySync(fd: number, data: Uint8Array, position: number): void {
  for (let done = 0; done < data.length; ) done += fs.writeSync(fd, data, done, data.length - done, position + done);
}

/**
 * `path` opened (again) with O_DIRECT and `access` (O_RDONLY, O_WRONLY, O_RDWR) at once, or null
 * where the filesystem refuses O_DIRECT (EINVAL: tmpfs before Linux 6.6, ramfs).
 */
export function openDirectSync(path: string, access: number): number | null {
  try {
    return fs.openSync(path, access | fs.constants.O_DIRECT);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') return null;
    throw e;
  }
}

/** preads in the thread pool until `into` is full or the file ends: the bytes read (fewer only at its end). */
export async function readUpTo(fd: number, into: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < into.length) {
    const n = await readAt(fd, into.subarray(done), position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** One pread(2) into `into` at `position` in the thread pool: the bytes read. */
export function readAt(fd: number, into: Uint8Array, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, into, 0, into.length, position, (e, n) => (e ? reject(e) : resolve(n))));
}
