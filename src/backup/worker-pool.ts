// Owns the repository's worker threads: tasks go to the least busy worker, results come back as
// promises; the bytes of a chunk move between threads without a copy (transferred).
import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import { BlkError, type Errno } from '../errors.js';
import type { ChunkResult, ChunkTask } from './chunk-worker.js';

interface Slot {
  worker: Worker;
  busy: number;
  /** Resolves once the worker's modules are loaded (its first message). */
  loaded: Promise<void>;
  isLoaded: boolean;
}

export class WorkerPool {
  #slots: Slot[];
  #pending = new Map<number, { resolve: (r: ChunkResult) => void; reject: (e: unknown) => void; slot: Slot }>();
  #nextId = 1;

  constructor(size = Math.max(1, os.availableParallelism())) {
    this.#slots = Array.from({ length: size }, () => {
      const worker = new Worker(new URL('./chunk-worker.js', import.meta.url));
      let markLoaded = () => {};
      const slot: Slot = { worker, busy: 0, loaded: new Promise((resolve) => (markLoaded = resolve)), isLoaded: false };
      // Stays referenced until loaded: a process ending (or a terminate) while the worker still
      // loads the FFI aborts the whole process inside koffi (FATAL ERROR ... napi_throw).
      worker.on('message', (m: { id: number; loaded?: true; result?: ChunkResult; error?: { code: Errno; message: string } }) => {
        if (m.loaded) {
          slot.isLoaded = true;
          markLoaded();
          if (slot.busy === 0) worker.unref();
          return;
        }
        const p = this.#pending.get(m.id);
        if (!p) return;
        this.#pending.delete(m.id);
        if (--p.slot.busy === 0 && slot.isLoaded) worker.unref();
        if (m.error) p.reject(new BlkError(m.error.code, m.error.message));
        else p.resolve(m.result as ChunkResult);
      });
      worker.on('error', (e) => {
        markLoaded();
        for (const [id, p] of this.#pending) {
          if (p.slot !== slot) continue;
          this.#pending.delete(id);
          p.reject(e);
        }
      });
      worker.once('exit', markLoaded);
      return slot;
    });
  }

  get size(): number {
    return this.#slots.length;
  }

  /** The least busy worker's number. */
  pick(): number {
    let best = 0;
    for (let i = 1; i < this.#slots.length; i++) if ((this.#slots[i] as Slot).busy < (this.#slots[best] as Slot).busy) best = i;
    return best;
  }

  /** Runs a task on worker `on` (default: the least busy): a `store` goes where its `hash` went. */
  run<K extends ChunkTask['kind']>(task: Extract<ChunkTask, { kind: K }>, transfer: ArrayBuffer[] = [], on = this.pick()): Promise<Extract<ChunkResult, { kind: K }>> {
    const slot = this.#slots[on] as Slot;
    // A worker with tasks keeps the process alive; an idle one does not.
    if (slot.busy++ === 0) slot.worker.ref();
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (r: ChunkResult) => void, reject, slot });
      slot.worker.postMessage({ id, task }, transfer);
    });
  }

  /** Runs a task on every worker (finish: each closes its pack). */
  runOnAll<K extends ChunkTask['kind']>(task: Extract<ChunkTask, { kind: K }>): Promise<Array<Extract<ChunkResult, { kind: K }>>> {
    return Promise.all(this.#slots.map((_, i) => this.run(task, [], i)));
  }

  async close(): Promise<void> {
    await Promise.all(this.#slots.map(async (s) => {
      await s.loaded;
      await s.worker.terminate();
    }));
  }
}
