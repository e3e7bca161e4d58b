// Owns the work of one of backup_restore's worker threads: loading and checking chunks, and writing
// runs of them to the target (a file or block device) with their repeated copies.
import { parentPort } from 'node:worker_threads';
import { BlkError, toBlkError } from '../../errors.js';
import { writeFully } from '../../os/fd-io.js';
import { DIRECT_ALIGNMENT } from '../../os/koffi.js';
import { startWriteback } from '../../os/writeback-range.js';
import { alignedBuffers, cipherFor, closePacks, cutFetched, decodeItem, loadTask, readStoredAsync } from './pack-reads.js';
import { SharedSlots } from '../../util/shared-slots.js';
import type { FetchedRange, ReadResult, ReadTask } from './tasks.js';

/**
 * Decodes a run into one buffer and writes each stretch of it with one pwrite, in the thread pool
 * so that this thread decodes the next run meanwhile. With O_DIRECT the bytes go from this buffer
 * to the disk: no page-cache copy and no final flood of writeback; two threads writing one file
 * through the page cache spun on its inode lock (measured: docs/performance.md).
 */
async function writeItems(task: Extract<ReadTask, { kind: 'write' }>): Promise<number> {
  const items = task.items;
  if (items.length === 0) return 0;
  const held: Buffer[] = [];
  const cipher = cipherFor(task.secret);
  // The items one after another (consecutive chunks: as they lie on the device).
  const span = alignedBuffers.acquire(items.reduce((a, item) => a + item.length, 0));
  const writes: Array<Promise<void>> = [];
  let written = 0;
  // Where the span's bytes go: [from, to) of it at device offset `at`. A piece grows while the next
  // item continues it both in the span and on the device (a stretch, or a stretch's copy).
  const pieces: Array<{ from: number; to: number; at: number }> = [];
  try {
    const stored = task.fetched ? cutFetched(items, { offset: task.fetched.offset, data: fetchedBytes(task.fetched) }) : await readStoredAsync(items, held);
    let growing: Array<{ from: number; to: number; at: number }> = [];
    let position = 0;
    items.forEach((item, i) => {
      const from = position;
      position += item.length;
      const into = span.subarray(from, from + item.length);
      if (item.where === null) {
        if (!task.writeZeros) {
          growing = [];
          return;
        }
        into.fill(0);
      } else {
        decodeItem(item, stored[i] as Buffer, into, cipher);
      }
      const grown: typeof growing = [];
      for (const at of [item.offset, ...(item.copies ?? [])]) {
        const piece = growing.find((p) => p.to === from && p.at + (p.to - p.from) === at);
        if (piece) piece.to = from + item.length;
        else pieces.push({ from, to: from + item.length, at });
        grown.push(piece ?? (pieces.at(-1) as (typeof pieces)[number]));
      }
      growing = grown;
    });
    for (const { from, to, at } of pieces) {
      const data = span.subarray(from, to);
      const aligned = task.direct ? data.length - (data.length % DIRECT_ALIGNMENT) : 0;
      if (aligned > 0) writes.push(writeFully(task.fd, data.subarray(0, aligned), at));
      if (aligned < data.length) writes.push(writeFully(task.bufferedFd, data.subarray(aligned), at + aligned));
      written += data.length;
    }
  } finally {
    for (const b of held) alignedBuffers.release(b);
    // Never back into use while a write of it may still run.
    void Promise.allSettled(writes).then(() => alignedBuffers.release(span));
  }
  // All settled before the task answers, failed or not: the main thread closes the target after the last answer.
  for (const w of await Promise.allSettled(writes)) if (w.status === 'rejected') throw w.reason;
  // Through the page cache, the restore ends in fsync: its disk writes start now, beside the work still to come.
  if (!task.direct) for (const { from, to, at } of pieces) startWriteback(task.fd, at, to - from);
  return written;
}

/** Memory the main thread fetches ranges into (a `rangeSlots` task). */
let rangeSlots: SharedSlots | null = null;

function fetchedBytes(fetched: FetchedRange): Uint8Array {
  if (fetched.data instanceof Uint8Array) return fetched.data;
  if (!rangeSlots) throw new BlkError('EINVAL', 'a write names a slot of memory, but none was shared');
  return rangeSlots.view(fetched.data.slot, fetched.data.length);
}

function fail(id: number, e: unknown): void {
  const err = toBlkError(e);
  parentPort?.postMessage({ id, error: { code: err.code, message: err.message } });
}

parentPort?.on('message', (message: { id: number; task: ReadTask }) => {
  const task = message.task;
  if (task.kind === 'write') {
    // Asynchronous: the next task is decoded while this one's writes run. A fetched range's slot is
    // free again once the task is done (failed or not: nothing reads it after).
    const slot = task.fetched && !(task.fetched.data instanceof Uint8Array) ? task.fetched.data.slot : null;
    writeItems(task)
      .finally(() => {
        if (slot !== null) rangeSlots?.release(slot);
      })
      .then(
        (writtenBytes) => parentPort?.postMessage({ id: message.id, result: { kind: 'write', writtenBytes } satisfies ReadResult }),
        (e: unknown) => fail(message.id, e),
      );
    return;
  }
  if (task.kind === 'rangeSlots') {
    rangeSlots = new SharedSlots(task.slots);
    parentPort?.postMessage({ id: message.id, result: { kind: 'rangeSlots' } satisfies ReadResult });
    return;
  }
  if (task.kind === 'closePacks') {
    try {
      parentPort?.postMessage({ id: message.id, result: { kind: 'closePacks', closed: closePacks(task.dir) } satisfies ReadResult });
    } catch (e) {
      fail(message.id, e);
    }
    return;
  }
  loadTask(task).then(
    (data) => parentPort?.postMessage({ id: message.id, result: { kind: 'load', data } satisfies ReadResult }, data.map((d) => d.buffer as ArrayBuffer)),
    (e: unknown) => fail(message.id, e),
  );
});

// Every import above is loaded: the pool may now let the process end, or terminate this thread.
parentPort?.postMessage({ loaded: true });
