// Owns one write whose data arrives in parts (a large NBD payload read off a socket): tracked as a
// single write, its parts landing on the store as they come instead of after the last one.
import type { Storage } from '../backing/storage.js';
import { toBlkError } from '../errors.js';
import type { Tracker } from './tracker.js';

/**
 * One write of `length` bytes at `offset`, for the tracker exactly one write: it passes the take's
 * gate, is marked in the CBT and has its chunks copied on write once, for its whole range, before
 * any part lands; it stays in flight until end(). So a take never falls between its parts (no
 * write half in, half out), and a part lands while the client still sends the next: a 1 MiB
 * write no longer waits for its last byte before the page-cache copy starts.
 */
export class WriteStream {
  readonly offset: number;
  readonly length: number;
  #tracker: Tracker;
  #storage: Storage;
  #onEnd: () => void;
  /** Settles when parts may land (gate passed, marked, originals kept); null once they may. */
  #ready: Promise<void> | null;
  /** Parts that could not land at once. */
  #landing: Array<Promise<void>> = [];
  #error: unknown = null;
  #hasEnded = false;
  /** Force unit access: durable (flushed) before end() settles. */
  #isFua: boolean;

  constructor(tracker: Tracker, storage: Storage, range: { offset: number; length: number; isFua: boolean }, onEnd: () => void) {
    const { offset, length } = range;
    this.#isFua = range.isFua;
    this.#tracker = tracker;
    this.#storage = storage;
    this.offset = offset;
    this.length = length;
    this.#onEnd = onEnd;
    const admitted = tracker.admitWrite(offset, length);
    this.#ready = admitted === undefined ? null : this.#whenAdmitted(admitted);
  }

  /**
   * Lands `data` at `at` (inside the range): at once when nothing waits, else after what does.
   * Once a part failed, later parts are dropped; end() rejects with the first error.
   */
  write(at: number, data: Uint8Array): void {
    if (this.#error !== null || this.#hasEnded) return;
    const fast = this.#storage.fast;
    if (this.#ready === null && fast) {
      try {
        if (fast.writeNow(at, data)) return;
      } catch (e) {
        this.#error = toBlkError(e);
        return;
      }
    }
    const land = (): Promise<void> => (this.#error === null ? this.#storage.write(at, data) : Promise.resolve());
    const ready = this.#ready;
    this.#landing.push((ready === null ? land() : ready.then(land)).catch((e: unknown) => this.#fail(e)));
  }

  /**
   * No more parts: settles once every part given has landed (or failed), then leaves the tracker.
   * Rejects with the first part's error. Called once, also when the client went mid-way.
   */
  async end(): Promise<void> {
    if (this.#hasEnded) return;
    this.#hasEnded = true;
    try {
      if (this.#ready !== null) await this.#ready;
      while (this.#landing.length > 0) await Promise.all(this.#landing.splice(0));
      if (this.#isFua && this.#error === null) await this.#storage.flush().catch((e: unknown) => this.#fail(e));
    } finally {
      this.#tracker.endWrite();
      this.#onEnd();
    }
    if (this.#error !== null) throw this.#error;
  }

  /** Keeps the first error: later parts are dropped, end() rejects with it. */
  #fail(e: unknown): void {
    this.#error ??= toBlkError(e);
  }

  /** Never rejects (nothing may be left unhandled): a failure is kept as the error, and no part lands. */
  async #whenAdmitted(admitted: Promise<void>): Promise<void> {
    try {
      await admitted;
      this.#ready = null;
    } catch (e) {
      this.#error ??= toBlkError(e);
    }
  }
}
