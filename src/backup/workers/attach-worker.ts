// Owns the work of the daemon's worker threads that serve a backup as a device (backup_attach):
// loading and checking chunks, and closing the packs read when the backup is detached.
import { parentPort } from 'node:worker_threads';
import { toBlkError } from '../../errors.js';
import { cipherFor, closePacks, forgetCipher, loadItems } from './pack-reads.js';
import type { ReadResult, ReadTask } from './tasks.js';

function run(task: Exclude<ReadTask, { kind: 'write' }>): { result: ReadResult; transfer: ArrayBuffer[] } {
  if (task.kind === 'closePacks') {
    forgetCipher(task.forget);
    return { result: { kind: 'closePacks', closed: closePacks(task.dir) }, transfer: [] };
  }
  const data = loadItems(task.items, cipherFor(task.secret));
  return { result: { kind: 'load', data }, transfer: data.map((d) => d.buffer as ArrayBuffer) };
}

function fail(id: number, e: unknown): void {
  const err = toBlkError(e);
  parentPort?.postMessage({ id, error: { code: err.code, message: err.message } });
}

parentPort?.on('message', (message: { id: number; task: ReadTask }) => {
  try {
    if (message.task.kind === 'write') throw new Error('a daemon\'s worker writes no restore');
    const { result, transfer } = run(message.task);
    parentPort?.postMessage({ id: message.id, result }, transfer);
  } catch (e) {
    fail(message.id, e);
  }
});

// Every import above is loaded: the pool may now let the process end, or terminate this thread.
parentPort?.postMessage({ loaded: true });
