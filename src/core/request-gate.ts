// Owns the checks every request of every exported device passes, once: closing, range, read-only, and
// the in-flight count that a close waits for (nbdkit's backend.c, for our devices and images).
import { BlkError } from '../errors.js';
import { Emitter } from '../util/emitter.js';
import { InFlight } from '../util/in-flight.js';

/** Checks a request range against a size; `pastEnd` is the errno for a range beyond it. */
export function checkRange(what: string, offset: number, length: number, size: number, pastEnd: 'EINVAL' | 'ENOSPC'): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new BlkError('EINVAL', `${what}: invalid range ${offset}+${length}`);
  }
  if (offset + length > size) {
    throw new BlkError(pastEnd, `${what}: range ${offset}+${length} lies past the end (${size} bytes)`, { offset, length, size });
  }
}

/**
 * The front door of a BlockDevice: a request enters (or is refused with the errno a client should
 * get: ESHUTDOWN while closing, EINVAL for a bad range or a read past the end, ENOSPC for a write
 * past the end, EPERM for a write to a read-only device) and leaves when it is done; close()
 * refuses new requests, waits for those inside, then tells the front ends. Front ends check only
 * what their wire adds (flags, lengths of their own limits).
 */
export class RequestGate {
  #describe: () => string;
  #size: () => number;
  #isReadOnly: () => boolean;
  #ops = new InFlight();
  #isClosing = false;
  #closeEmitter = new Emitter<void>();
  readonly onClose = this.#closeEmitter.event;

  /** `describe` names the device in errors ("device d0", "the snapshot of d0"). */
  constructor(describe: () => string, size: () => number, isReadOnly: () => boolean) {
    this.#describe = describe;
    this.#size = size;
    this.#isReadOnly = isReadOnly;
  }

  get isClosing(): boolean {
    return this.#isClosing;
  }

  /** Enters a request that does not change data (read, flush, block status, cache). */
  enter(what: string, offset: number, length: number): void {
    if (this.#isClosing) throw new BlkError('ESHUTDOWN', `${what}: ${this.#describe()} is going away`);
    checkRange(what, offset, length, this.#size(), 'EINVAL');
    this.#ops.enter();
  }

  /** Enters a request that changes data (write, zero, trim). */
  enterWrite(what: string, offset: number, length: number): void {
    if (this.#isReadOnly()) throw new BlkError('EPERM', `${what}: ${this.#describe()} is read-only`);
    if (this.#isClosing) throw new BlkError('ESHUTDOWN', `${what}: ${this.#describe()} is going away`);
    checkRange(what, offset, length, this.#size(), 'ENOSPC');
    this.#ops.enter();
  }

  leave(): void {
    this.#ops.leave();
  }

  /** Runs synchronous `work` (a fast path) inside the gate. */
  during<T>(what: string, offset: number, length: number, work: () => T): T {
    this.enter(what, offset, length);
    try {
      return work();
    } finally {
      this.leave();
    }
  }

  /** Runs `work` inside the gate: entered now, left when it settles. */
  around<T>(what: string, offset: number, length: number, work: () => Promise<T>): Promise<T> {
    return this.aroundUnlessDeclined(what, offset, length, work) as Promise<T>;
  }

  /** As around, for `work` that may decline at once (null): the gate is then left at once. */
  aroundUnlessDeclined<T>(what: string, offset: number, length: number, work: () => Promise<T> | null): Promise<T> | null {
    this.enter(what, offset, length);
    let p: Promise<T> | null;
    try {
      p = work();
    } catch (e) {
      this.leave();
      throw e;
    }
    if (p === null) {
      this.leave();
      return null;
    }
    return p.finally(() => this.leave());
  }

  /** Refuses new requests, waits for those inside, then fires onClose. Idempotent: false the second time. */
  async close(): Promise<boolean> {
    if (this.#isClosing) return false;
    this.#isClosing = true;
    await this.#ops.idle();
    this.#closeEmitter.fire();
    return true;
  }
}
