// Owns a snapshot's event queue: blksnap's events (corrupted, no_space) and low_space (the difference
// storage past its warning share), read one at a time with a timeout.
import type { BlkError } from '../errors.js';
import { Emitter } from '../util/emitter.js';

export type SnapshotEvent =
  | { code: 'corrupted'; time: number; data: { device: string; errorCode: number } }
  | { code: 'no_space'; time: number; data: { requestedSectors: number } }
  | { code: 'low_space'; time: number; data: { usedSectors: number; limitSectors: number } };

/**
 * Bounded: past `maximumLength` the oldest event other than `corrupted` is dropped, so an unread
 * queue cannot grow forever and the one event that says the snapshot is broken is never lost.
 */
export class EventQueue {
  #events: SnapshotEvent[] = [];
  #waiters: Array<(e: SnapshotEvent | null) => void> = [];
  #closedReason: BlkError | null = null;
  #pushed = new Emitter<SnapshotEvent>();
  /** Fires for every event as it is queued (the daemon logs them). */
  readonly onPush = this.#pushed.event;
  readonly maximumLength: number;

  constructor(maximumLength: number) {
    this.maximumLength = maximumLength;
  }

  push(event: SnapshotEvent): void {
    if (this.#closedReason) return;
    this.#pushed.fire(event);
    const waiter = this.#waiters.shift();
    if (waiter) return waiter(event);
    this.#events.push(event);
    if (this.#events.length > this.maximumLength) {
      const oldest = this.#events.findIndex((e) => e.code !== 'corrupted');
      this.#events.splice(Math.max(0, oldest), 1);
    }
  }

  /** The next event, or null after timeoutMs. Rejects once the queue is closed (snapshot destroyed). */
  wait(timeoutMs: number): Promise<SnapshotEvent | null> {
    const queued = this.#events.shift();
    if (queued) return Promise.resolve(queued);
    if (this.#closedReason) return Promise.reject(this.#closedReason);
    return new Promise((resolve, reject) => {
      const waiter = (e: SnapshotEvent | null): void => {
        clearTimeout(timer);
        if (e === null && this.#closedReason) reject(this.#closedReason);
        else resolve(e);
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        resolve(null);
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  close(reason: BlkError): void {
    this.#closedReason = reason;
    for (const w of this.#waiters.splice(0)) w(null);
  }
}
