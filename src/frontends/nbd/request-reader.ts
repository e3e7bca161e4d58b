// Owns reading NBD requests off a connection: headers and their write payloads (small ones from the
// queue, large ones straight into their own buffer and handed on as they come), refused payloads
// skipped. It hands on whole parsed requests and knows nothing of how they run.
import { nbdIo } from '../../params.js';
import type { BlkError } from '../../errors.js';
import { ioBuffers } from '../../util/buffer-pool.js';
import type { ByteQueue } from '../../util/byte-queue.js';
import { IncomingWrite } from './incoming-write.js';
import * as w from '../../nbd/wire.js';

export type TransmissionStep = { kind: 'more' } | { kind: 'paused' } | { kind: 'close'; reason: string };

/**
 * A request as it comes off the wire: its header, a write's payload (whole, in the pieces it came
 * in, or still coming), or the error a refused write is answered with (its payload skipped).
 */
export interface Request {
  header: w.RequestHeader;
  payload?: Buffer | Buffer[] | IncomingWrite;
  refused?: BlkError;
}

export type ReaderStep = { kind: 'request'; request: Request } | { kind: 'more' } | { kind: 'close'; reason: string };

/**
 * The request side of a connection, read by next(): skip a refused payload, fill a large payload
 * under way, wait for a small payload, else parse the next header. The socket reads a large
 * payload's rest straight into its buffer (receiveTarget / received); its request is handed on at
 * once, so its parts reach the device as they come.
 */
export class RequestReader {
  /** What the wire adds to a write's header checks (flags, size): its payload is skipped when refused. */
  #validateWrite: (h: w.RequestHeader) => BlkError | null;
  #pending: w.RequestHeader | null = null;
  /** A large write payload being received straight into its own buffer (see receiveTarget). */
  #incoming: IncomingWrite | null = null;
  #skipLeft = 0;
  #skipError: BlkError | null = null;
  #isDisconnecting = false;
  /** The payload under way and its progress when the stall check was armed; null when not armed. */
  #stallWatch: { incoming: IncomingWrite; filled: number } | null = null;

  constructor(validateWrite: (h: w.RequestHeader) => BlkError | null) {
    this.#validateWrite = validateWrite;
  }

  get isDisconnecting(): boolean {
    return this.#isDisconnecting;
  }

  /** Between requests: the next thing read is a header (a busy connection reads none for now). */
  get isAtHeader(): boolean {
    return this.#pending === null && this.#incoming === null && this.#skipLeft === 0;
  }

  next(queue: ByteQueue): ReaderStep {
    for (;;) {
      if (this.#isDisconnecting) {
        queue.clear();
        return { kind: 'more' };
      }
      if (this.#skipLeft > 0) {
        this.#skipLeft -= queue.skip(this.#skipLeft);
        if (this.#skipLeft > 0) return { kind: 'more' };
        const header = this.#pending as w.RequestHeader;
        this.#pending = null;
        return { kind: 'request', request: { header, refused: this.#skipError as BlkError } };
      }
      if (this.#incoming !== null) {
        // The socket chooses the buffer of its next read when the previous read is handled, so
        // bytes of a payload that started outside a read (resumed after a pause) land in the
        // queue: they belong to the payload.
        if (queue.length === 0) return { kind: 'more' };
        const target = this.#incoming.target;
        const n = Math.min(queue.length, target.length);
        queue.takeInto(target, n);
        this.received(n);
        continue;
      }
      if (this.#pending !== null) {
        const header = this.#pending;
        if (queue.length < header.length) {
          if (header.length < nbdIo.directPayloadMinimum) return { kind: 'more' };
          // The socket reads the rest of this payload straight into its buffer (receiveTarget).
          const incoming = new IncomingWrite(header, queue);
          this.#incoming = incoming;
          this.#pending = null;
          this.#watchStall();
          return { kind: 'request', request: { header, payload: incoming } };
        }
        this.#pending = null;
        // A payload that arrived in several socket chunks goes on as they are (pwritev).
        const payload = queue.isContiguous(header.length) ? queue.take(header.length, ioBuffers) : queue.takeChunks(header.length);
        return { kind: 'request', request: { header, payload } };
      }
      if (queue.length < w.REQUEST_HEADER_LENGTH) return { kind: 'more' };
      const header = w.decodeRequestHeader(queue.take(w.REQUEST_HEADER_LENGTH));
      if (!header.isMagicValid) return { kind: 'close', reason: 'bad request magic' };
      if (header.type === w.NBD_CMD_WRITE) {
        const error = this.#validateWrite(header);
        if (error) {
          if (header.length === 0) return { kind: 'request', request: { header, refused: error } };
          // The payload is consumed without being kept, then the error is replied.
          this.#pending = header;
          this.#skipLeft = header.length;
          this.#skipError = error;
        } else {
          this.#pending = header;
        }
        continue;
      }
      if (header.type === w.NBD_CMD_DISC) this.#isDisconnecting = true;
      return { kind: 'request', request: { header } };
    }
  }

  /**
   * Where the socket should read next when a large write's payload is under way: the unfilled
   * part of that payload's buffer, so the kernel copies it there once and nothing copies it
   * again; null otherwise (the socket reads into a fresh chunk for the queue).
   */
  receiveTarget(): Buffer | null {
    return this.#incoming?.target ?? null;
  }

  /** `n` more bytes of the payload are in the buffer receiveTarget() gave. */
  received(n: number): void {
    if ((this.#incoming as IncomingWrite).received(n)) this.#incoming = null;
  }

  /** The connection is gone: a payload under way ends its write with what landed. */
  dispose(): void {
    this.#incoming?.dispose();
    this.#incoming = null;
  }

  /**
   * A write whose parts reach the device as they come is in flight for the device until its last
   * byte came, and a take waits for the writes in flight. A client that stops mid-payload must not
   * hold a take (or a detach) back: after nbdIo.streamStallMs without a byte, what landed stays,
   * the device write ends, and the rest is written as a write of its own once it comes. Only then
   * can a take fall inside this write. One timer per connection, armed while a payload comes.
   */
  #watchStall(): void {
    const incoming = this.#incoming;
    if (this.#stallWatch !== null || incoming === null) return;
    this.#stallWatch = { incoming, filled: incoming.filled };
    setTimeout(() => this.#checkStall(), nbdIo.streamStallMs).unref();
  }

  #checkStall(): void {
    const watch = this.#stallWatch;
    this.#stallWatch = null;
    const incoming = this.#incoming;
    if (incoming === null || !incoming.isDelivering) return; // the next payload watches again
    if (watch?.incoming === incoming && watch.filled === incoming.filled) return incoming.stopDelivering();
    this.#watchStall();
  }
}
