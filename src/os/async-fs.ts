// Owns the file calls made on paths a client gave: in the thread pool, never on the event loop, since such
// a path may lie where only this event loop serves the blocks.
import * as fs from 'node:fs';

/** open(2) in the thread pool. */
export function openAsync(path: string, flags: number, mode = 0o600): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, mode, (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** fstat(2) in the thread pool. */
export function fstatAsync(fd: number): Promise<fs.Stats> {
  return new Promise((resolve, reject) => fs.fstat(fd, (err, st) => (err ? reject(err) : resolve(st))));
}

/** close(2) in the thread pool; errors are of no use to a caller that is done with the file. */
export function closeAsync(fd: number): Promise<void> {
  return new Promise((resolve) => fs.close(fd, () => resolve()));
}
