// Owns the work of the daemon's worker threads that serve a backup as a device (backup_attach):
// loading and checking chunks, and closing the packs read when the backup is detached.
import { parentPort } from 'node:worker_threads';
import { toBlkError } from '../../errors.js';
import { closePacks, forgetCipher, loadTask } from './pack-reads.js';
import type { ReadResult, ReadTask } from './tasks.js';

async function run(task: Exclude<ReadTask, { kind: 'write' | 'rangeSlots' }>): Promise<{ result: ReadResult; transfer: ArrayBuffer[] }> {
  if (task.kind === 'closePacks') {
    forgetCipher(task.forget);
    return { result: { kind: 'closePacks', closed: closePacks(task.dir) }, transfer: [] };
  }
  // Packs in a bucket are read by range (their records fetched span by span); local ones by pread.
  const data = await loadTask(task);
  return { result: { kind: 'load', data }, transfer: data.map((d) => d.buffer as ArrayBuffer) };
}

function fail(id: number, e: unknown): void {
  const err = toBlkError(e);
  parentPort?.postMessage({ id, error: { code: err.code, message: err.message } });
}

parentPort?.on('message', (message: { id: number; task: ReadTask }) => {
  const task = message.task;
  if (task.kind === 'write' || task.kind === 'rangeSlots') return fail(message.id, new Error("a daemon's worker writes no restore"));
  run(task).then(
    ({ result, transfer }) => parentPort?.postMessage({ id: message.id, result }, transfer),
    (e: unknown) => fail(message.id, e),
  );
});

// Every import above is loaded: the pool may now let the process end, or terminate this thread.
parentPort?.postMessage({ loaded: true });
