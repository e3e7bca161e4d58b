// Owns small durable writes that must not queue behind bulk I/O: a thread of its own does pwrite and
// fdatasync synchronously, so a write-intent record waits for the disk alone, not for the libuv
// pool that carries the stores' large reads and writes.
import { Worker } from 'node:worker_threads';
import { BlkError, type Errno } from '../errors.js';

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
parentPort.on('message', ({ id, fd, data, position }) => {
  try {
    let done = 0;
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, position + done);
    fs.fdatasyncSync(fd);
    parentPort.postMessage({ id });
  } catch (e) {
    parentPort.postMessage({ id, code: e.code || 'EIO', message: e.message });
  }
});
`;

export class SyncWriter {
  #worker: Worker | null = null;
  #pending = new Map<number, { resolve: () => void; reject: (e: unknown) => void }>();
  #nextId = 1;

  #start(): Worker {
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    worker.on('message', (m: { id: number; code?: Errno; message?: string }) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (this.#pending.size === 0) worker.unref();
      if (m.code) p.reject(new BlkError(m.code, m.message ?? 'write failed'));
      else p.resolve();
    });
    worker.on('error', (e) => {
      for (const p of this.#pending.values()) p.reject(e);
      this.#pending.clear();
      this.#worker = null;
    });
    worker.unref();
    return worker;
  }

  /** Writes `data` at `position` of `fd` and makes it durable (fdatasync). */
  writeDurably(fd: number, data: Uint8Array, position: number): Promise<void> {
    this.#worker ??= this.#start();
    const worker = this.#worker;
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      worker.ref(); // a record write under way keeps the process alive until it is durable
      worker.postMessage({ id, fd, data, position });
    });
  }

  async close(): Promise<void> {
    await this.#worker?.terminate();
    this.#worker = null;
  }
}

/** The process's one writer for write-intent records. */
export const syncWriter = new SyncWriter();
