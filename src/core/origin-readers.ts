// Owns who may still be reading an untouched chunk's original from the device: image reads on the
// event loop, sockets the chunk's pages were sent to by reference, and other threads' reads (shared
// pins). A copy-on-write write, once it has kept the original, waits here until every one is done,
// since the write changes those very pages.
import type { SendSink } from './block-device.js';

/** Counters of other threads' reads (chunk i uses 1 + i % this); word 0 = 1: the image is closed. */
const THREAD_PIN_SLOTS = 1024;
/** Chunks with sent-to entries beyond which the entries of sockets already read are dropped (at most every 10 ms)... */
const SENT_SWEEP_AT = 4096;
const SENT_SWEEP_EVERY_MS = 10;
/** ... and beyond which image reads are copied, not sent: memory stays bounded while clients keep their sockets full. */
const SENT_MAXIMUM = 16384;

/** The counter in `pins` (ImageReadGate.pins) that a thread reading chunk `chunk` from the device holds. */
export function threadPinOf(pins: Int32Array, chunk: number): number {
  return 1 + (chunk % (pins.length - 1));
}

export class OriginReaders {
  /** Other threads' pins, shared (ImageReadGate.pins): a thread pins a chunk, checks word 0 and the chunk's state, reads, unpins. */
  readonly threadPins = new Int32Array(new SharedArrayBuffer(4 * (1 + THREAD_PIN_SLOTS)));
  #onLoop = new Map<number, { count: number; waiters: Array<() => void> }>();
  /** Sockets each chunk was sent to; entries go once seen read. */
  #sentTo = new Map<number, { sinks: SendSink[]; read?: Promise<void> }>();
  #lastSweepAt = -Infinity;

  /** An event-loop read of chunk i from the device begins. */
  pin(i: number): void {
    const r = this.#onLoop.get(i);
    if (r) r.count++;
    else this.#onLoop.set(i, { count: 1, waiters: [] });
  }

  unpin(i: number): void {
    const r = this.#onLoop.get(i);
    if (!r || --r.count > 0) return;
    this.#onLoop.delete(i);
    for (const wake of r.waiters) wake();
  }

  /** Whether chunks first..last may be sent by reference now: false past the bound (after a sweep of sockets already read). */
  maySend(first: number, last: number): boolean {
    if (this.#sentTo.size > SENT_SWEEP_AT) this.#forgetRead();
    return this.#sentTo.size + (last - first + 1) <= SENT_MAXIMUM;
  }

  /** Chunks first..last went to `sink` by page reference. */
  sent(first: number, last: number, sink: SendSink): void {
    for (let i = first; i <= last; i++) {
      const sent = this.#sentTo.get(i);
      if (!sent) this.#sentTo.set(i, { sinks: [sink] });
      else if (!sent.sinks.includes(sink)) sent.sinks.push(sink);
    }
  }

  /** Other threads stop reading the device for the image (destroyed, or corrupted). */
  closeToThreads(): void {
    Atomics.store(this.threadPins, 0, 1);
  }

  /**
   * Resolves when nobody reads chunk i's original from the device any more. Called after the
   * original is kept (the chunk has left the untouched state), so no new reader begins.
   */
  async drained(i: number): Promise<void> {
    const onLoop = this.#onLoop.get(i);
    if (onLoop) await new Promise<void>((resolve) => onLoop.waiters.push(resolve));
    const sent = this.#sentTo.get(i);
    if (sent) {
      // Other writes to the chunk wait for the same.
      sent.read ??= Promise.all(sent.sinks.map((sink) => (sink.isRead() ? undefined : sink.whenRead()))).then(() => {
        this.#sentTo.delete(i);
      });
      await sent.read;
    }
    const pin = threadPinOf(this.threadPins, i);
    while (Atomics.load(this.threadPins, pin) > 0) await new Promise((resolve) => setImmediate(resolve));
  }

  /** Drops the entries of sockets whose client has read everything (asked once per socket), at most every 10 ms. */
  #forgetRead(): void {
    const now = performance.now();
    if (now - this.#lastSweepAt < SENT_SWEEP_EVERY_MS) return;
    this.#lastSweepAt = now;
    const read = new Map<SendSink, boolean>();
    for (const [i, sent] of this.#sentTo) {
      if (sent.read) continue; // a write waits on these
      sent.sinks = sent.sinks.filter((sink) => {
        let isRead = read.get(sink);
        if (isRead === undefined) {
          isRead = sink.isRead();
          read.set(sink, isRead);
        }
        return !isRead;
      });
      if (sent.sinks.length === 0) this.#sentTo.delete(i);
    }
  }
}
