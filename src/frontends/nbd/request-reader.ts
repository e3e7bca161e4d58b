// Owns reading NBD requests off a connection: headers, write payloads (small ones from the queue, large
// ones straight into their own buffer, streamed to the device as they come), refused payloads skipped.
import { nbdIo } from '../../params.js';
import type { BlockDevice } from '../../core/block-device.js';
import type { BlkError } from '../../errors.js';
import { ioBuffers } from '../../util/buffer-pool.js';
import type { ByteQueue } from '../../util/byte-queue.js';
import { IncomingWrite } from './incoming-write.js';
import * as w from '../../nbd/wire.js';


export type TransmissionStep = { kind: 'more' } | { kind: 'paused' } | { kind: 'close'; reason: string };

/** Where read requests go: the runner that executes them and sends their replies. */
export interface RequestSink {
  /** Too much in flight, or replies not read: read no further request for now. */
  readonly isBusy: boolean;
  /** A write's header is in: null when it may go on, else the error its reply carries. */
  checkWrite(h: w.RequestHeader): BlkError | null;
  /** A request with its payload (writes), whole. */
  run(h: w.RequestHeader, payload: Buffer | Buffer[] | undefined): void;
  /** A request refused before it ran (its payload, if any, was skipped). */
  refuse(h: w.RequestHeader, error: BlkError): void;
  /** A write whose parts land as they come has started (it is in flight from now). */
  streamStarted(h: w.RequestHeader): void;
  /** A streamed write's payload is whole: finish it and reply. */
  streamWhole(incoming: IncomingWrite): void;
  /** NBD_CMD_DISC came: reply to what runs, then close. */
  disconnect(): void;
}

/**
 * The request side of a connection, read top to bottom by feed(): skip a refused payload, fill a
 * large payload under way, wait for a small payload, else parse the next header. The socket reads
 * a large payload's rest straight into its buffer (receiveTarget / received).
 */
export class RequestReader {
  #device: BlockDevice;
  #sink: RequestSink;
  #pending: w.RequestHeader | null = null;
  /** A large write payload being received straight into its own buffer (see receiveTarget). */
  #incoming: IncomingWrite | null = null;
  #skipLeft = 0;
  #skipError: BlkError | null = null;
  #isDisconnecting = false;
  /** The streamed payload and its progress when the stall check was armed; null when not armed. */
  #stallWatch: { incoming: IncomingWrite; filled: number } | null = null;

  constructor(device: BlockDevice, sink: RequestSink) {
    this.#device = device;
    this.#sink = sink;
  }

  get isDisconnecting(): boolean {
    return this.#isDisconnecting;
  }

  feed(queue: ByteQueue): TransmissionStep {
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
        this.#sink.refuse(header, this.#skipError as BlkError);
        continue;
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
          // The socket reads the rest of this payload straight into its buffer (receiveTarget);
          // where the device can, its parts land as they come.
          const incoming = new IncomingWrite(header, queue, this.#device);
          this.#incoming = incoming;
          if (incoming.isStreamed) {
            this.#sink.streamStarted(header);
            this.#watchStall();
          }
          return { kind: 'more' };
        }
        this.#pending = null;
        // A payload that arrived in several socket chunks goes to the store as they are (pwritev).
        if (this.#device.fast && !queue.isContiguous(header.length)) this.#sink.run(header, queue.takeChunks(header.length));
        else this.#sink.run(header, queue.take(header.length, ioBuffers));
        continue;
      }
      if (this.#sink.isBusy) return { kind: 'paused' };
      if (queue.length < w.REQUEST_HEADER_LENGTH) return { kind: 'more' };
      const header = w.decodeRequestHeader(queue.take(w.REQUEST_HEADER_LENGTH));
      if (!header.isMagicValid) return { kind: 'close', reason: 'bad request magic' };
      if (header.type === w.NBD_CMD_WRITE) {
        const error = this.#sink.checkWrite(header);
        this.#pending = header;
        if (error) {
          // The payload is consumed without being kept, then the error is replied.
          this.#skipLeft = header.length;
          this.#skipError = error;
          if (header.length === 0) {
            this.#pending = null;
            this.#sink.refuse(header, error);
          }
        }
        continue;
      }
      if (header.type === w.NBD_CMD_DISC) {
        this.#isDisconnecting = true;
        this.#sink.disconnect();
        continue;
      }
      this.#sink.run(header, undefined);
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

  /** `n` more bytes of the payload are in the buffer receiveTarget() gave; the write completes once it is whole. */
  received(n: number): void {
    const incoming = this.#incoming as IncomingWrite;
    if (!incoming.received(n)) return;
    this.#incoming = null;
    this.#pending = null;
    if (incoming.isStreamed) this.#sink.streamWhole(incoming);
    else this.#sink.run(incoming.header, incoming.payload);
  }

  /** The connection is gone: a payload under way gives back its buffer (a streamed write ends with what landed). */
  dispose(): void {
    this.#incoming?.dispose();
    this.#incoming = null;
  }

  /**
   * A streamed write is in flight for the device until its last byte came, and a take waits for
   * the writes in flight. A client that stops mid-payload must not hold a take (or a detach)
   * back: after nbdIo.streamStallMs without a byte, what landed stays, the stream ends, and the rest
   * is written as a write of its own once it comes. Only then can a take fall inside this write.
   * One timer per connection, armed while a write streams.
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
    if (incoming === null || !incoming.isStreaming) return; // the next streamed write watches again
    if (watch?.incoming === incoming && watch.filled === incoming.filled) return incoming.stopStreaming();
    this.#watchStall();
  }
}
