// Owns a program's worker threads: tasks go to the least busy worker, results come back as
// promises; the bytes of a chunk move between threads without a copy (transferred). Each kind of
// worker is a script of its own, so a process loads only the code its work needs.
import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import { BlkError, type Errno } from '../../errors.js';
import type { CreateResult, CreateTask, ReadResult, ReadTask, VerifyResult, VerifyTask } from './tasks.js';

/** The workers there are, each with the tasks it takes and the results it gives. */
export const WORKERS = {
  create: new URL('./create-worker.js', import.meta.url),
  restore: new URL('./restore-worker.js', import.meta.url),
  attach: new URL('./attach-worker.js', import.meta.url),
  verify: new URL('./verify-worker.js', import.meta.url),
} as const;

interface Kinds {
  create: { task: CreateTask; result: CreateResult };
  restore: { task: ReadTask; result: ReadResult };
  attach: { task: ReadTask; result: ReadResult };
  verify: { task: VerifyTask; result: VerifyResult };
}

interface Slot {
  worker: Worker;
  busy: number;
  /** Resolves once the worker's modules are loaded (its first message). */
  loaded: Promise<void>;
  isLoaded: boolean;
}

export class WorkerPool<K extends keyof Kinds> {
  #slots: Slot[];
  #pending = new Map<number, { resolve: (r: Kinds[K]['result']) => void; reject: (e: unknown) => void; slot: Slot }>();
  #nextId = 1;

  constructor(kind: K, size = Math.max(1, os.availableParallelism())) {
    this.#slots = Array.from({ length: size }, () => {
      const worker = new Worker(WORKERS[kind]);
      let markLoaded = () => {};
      const slot: Slot = { worker, busy: 0, loaded: new Promise((resolve) => (markLoaded = resolve)), isLoaded: false };
      // Stays referenced until loaded: a process ending (or a terminate) while the worker still
      // loads the FFI aborts the whole process inside koffi (FATAL ERROR ... napi_throw).
      worker.on('message', (m: { id: number; loaded?: true; result?: Kinds[K]['result']; error?: { code: Errno; message: string } }) => {
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
        else p.resolve(m.result as Kinds[K]['result']);
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
  run<T extends Kinds[K]['task']['kind']>(task: Extract<Kinds[K]['task'], { kind: T }>, transfer: ArrayBuffer[] = [], on = this.pick()): Promise<Extract<Kinds[K]['result'], { kind: T }>> {
    const slot = this.#slots[on] as Slot;
    // A worker with tasks keeps the process alive; an idle one does not.
    if (slot.busy++ === 0) slot.worker.ref();
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (r: Kinds[K]['result']) => void, reject, slot });
      slot.worker.postMessage({ id, task }, transfer);
    });
  }

  /** Runs a task on every worker (finish: each puts its packs in place). */
  runOnAll<T extends Kinds[K]['task']['kind']>(task: Extract<Kinds[K]['task'], { kind: T }>): Promise<Array<Extract<Kinds[K]['result'], { kind: T }>>> {
    return Promise.all(this.#slots.map((_, i) => this.run(task, [], i)));
  }

  async close(): Promise<void> {
    await Promise.all(this.#slots.map(async (s) => {
      await s.loaded;
      await s.worker.terminate();
    }));
  }
}
