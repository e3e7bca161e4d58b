// Owns one large NBD write while its payload comes off the socket: the buffer the socket reads it
// into, and, where the device can, the device write its parts land in as they arrive.
import { nbdIo } from '../../params.js';
import { IoFlag, type BlockDevice } from '../../core/block-device.js';
import type { WriteStream } from '../../core/write-stream.js';
import { ioBuffers } from '../../util/buffer-pool.js';
import { totalLength, type ByteQueue } from '../../util/byte-queue.js';
import * as w from '../../nbd/wire.js';

/**
 * The payload of a write whose header is parsed: what came with the header stays where it was
 * read (`head`, views of the receive arena) and the socket reads the rest straight into `buffer`.
 *
 * Where the device offers streamWrite, the payload lands as it arrives: the page-cache copy of
 * one part overlaps the client sending the next (measured: docs/performance.md, "Design choices,
 * measured"). For the device it is one write, tracked once and in flight until the last part.
 */
export class IncomingWrite {
  readonly header: w.RequestHeader;
  readonly head: Buffer[];
  readonly buffer: Buffer;
  /** Bytes of `buffer` received. */
  filled = 0;
  /** Where `buffer` starts on the device (after the head). */
  #bufferOffset: number;
  /** The device write the parts land in; null when not streaming (or no longer). */
  #stream: WriteStream | null = null;
  /** Bytes of `buffer` given to the stream. */
  #landed = 0;
  /** Settles when a stream stopped part-way has ended (its parts landed). */
  #streamEnded: Promise<void> | null = null;

  /**
   * Takes what the queue holds of the payload: as views where the device writes pieces, else
   * copied into the start of the buffer. Then opens the device write, where it can stream.
   */
  constructor(header: w.RequestHeader, queue: ByteQueue, device: BlockDevice) {
    this.header = header;
    const fast = device.fast;
    if (fast) {
      this.head = queue.takeChunks(queue.length);
      this.buffer = ioBuffers.acquire(header.length - totalLength(this.head));
    } else {
      this.head = [];
      this.buffer = ioBuffers.acquire(header.length);
      this.filled = queue.length;
      queue.takeInto(this.buffer, this.filled);
    }
    this.#bufferOffset = header.offset + totalLength(this.head);
    if (!fast) return;
    let stream: WriteStream | null;
    try {
      stream = fast.streamWrite(header.offset, header.length, header.flags & w.NBD_CMD_FLAG_FUA ? IoFlag.Fua : IoFlag.None);
    } catch {
      return; // e.g. the device is going away: the whole-payload path replies the error
    }
    if (stream === null) return; // the device cannot stream: the payload is written whole
    this.#stream = stream;
    let at = header.offset;
    for (const chunk of this.head) {
      stream.write(at, chunk);
      at += chunk.length;
    }
    this.#landParts(stream);
  }

  /** True once the device write is open (the caller counts it in flight from now). */
  get isStreamed(): boolean {
    return this.#stream !== null || this.#streamEnded !== null;
  }

  get isStreaming(): boolean {
    return this.#stream !== null;
  }

  /** Where the socket reads next: the unfilled rest of the buffer. */
  get target(): Buffer {
    return this.buffer.subarray(this.filled);
  }

  /** `n` more bytes are in the buffer; lands a part when enough came. True once the payload is whole. */
  received(n: number): boolean {
    this.filled += n;
    const isWhole = this.filled === this.buffer.length;
    if (this.#stream !== null && (isWhole || this.filled - this.#landed >= nbdIo.streamPartMinimum)) this.#landParts(this.#stream);
    return isWhole;
  }

  /** The payload as pieces, for a write that did not stream. */
  get payload(): Buffer | Buffer[] {
    return this.head.length > 0 ? [...this.head, this.buffer] : this.buffer;
  }

  /**
   * The client sends nothing: what landed stays, the device write ends (a take waiting for it
   * goes on), and finish() writes the rest as a write of its own.
   */
  stopStreaming(): void {
    const stream = this.#stream;
    if (stream === null) return;
    this.#stream = null;
    this.#streamEnded = stream.end();
    this.#streamEnded.catch(() => undefined);
  }

  /** The payload is whole: settles once every part landed (the rest too, if streaming stopped). */
  finish(device: BlockDevice): Promise<void> {
    if (this.#stream !== null) return this.#stream.end();
    const h = this.header;
    const rest = this.buffer.subarray(this.#landed);
    const flags = h.flags & w.NBD_CMD_FLAG_FUA ? IoFlag.Fua : IoFlag.None;
    return (this.#streamEnded ?? Promise.resolve()).then(() => device.write(this.#bufferOffset + this.#landed, rest, flags));
  }

  /** The connection is gone: a streamed write ends with the parts it has; the buffers go back after. */
  dispose(): void {
    const ended = this.#stream?.end() ?? this.#streamEnded ?? Promise.resolve();
    this.#stream = null;
    void ended.catch(() => undefined).then(() => this.release());
  }

  release(): void {
    for (const chunk of this.head) ioBuffers.release(chunk);
    ioBuffers.release(this.buffer);
  }

  #landParts(stream: WriteStream): void {
    if (this.filled === this.#landed) return;
    stream.write(this.#bufferOffset + this.#landed, this.buffer.subarray(this.#landed, this.filled));
    this.#landed = this.filled;
  }
}
