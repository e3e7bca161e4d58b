// Owns starting the writeback of a file range (sync_file_range), apart from libc.ts: the repository's
// worker threads load this, and libc.ts defines koffi types, which a second thread may not define again.
import { koffi } from './koffi.js';

const syncFileRangeFn = koffi.load('libc.so.6').func('int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags)');
const SYNC_FILE_RANGE_WRITE = 2;

/**
 * Starts writeback of a range now, without waiting for it: a long write that ends in fsync overlaps
 * its disk writes with the rest of its work.
 */
export function startWriteback(fd: number, offset: number, length: number): void {
  syncFileRangeFn(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}
