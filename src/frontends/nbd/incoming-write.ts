// Owns one large NBD write while its payload comes off the socket: the buffer the socket reads it
// into, and the parts it hands the device as they arrive (the device lands them as they come, or
// gathers them).
import { nbdIo } from '../../params.js';
import { IoFlag, type BlockDevice, type IncomingParts, type IoFlags } from '../../core/block-device.js';
import { ioBuffers } from '../../util/buffer-pool.js';
import { totalLength, type ByteQueue } from '../../util/byte-queue.js';
import type * as w from '../../nbd/wire.js';

/**
 * The payload of a write whose header is parsed: what came with the header stays where it was read
 * (`head`, views of the receive arena) and the socket reads the rest straight into `buffer`. Parts
 * go to the device as they come, in parts of at least nbdIo.streamPartMinimum: the page-cache copy
 * of one overlaps the client sending the next (docs/performance.md).
 */
export class IncomingWrite implements IncomingParts {
  readonly header: w.RequestHeader;
  readonly length: number;
  readonly head: Buffer[];
  readonly buffer: Buffer;
  /** Bytes of `buffer` received. */
  filled = 0;
  /** Where `buffer` starts on the device (after the head). */
  #bufferOffset: number;
  /** Bytes of `buffer` handed to the device. */
  #landed = 0;
  /** The device's taker of parts while it takes them; null before deliver() and once it ended. */
  #land: ((part: Uint8Array) => void) | null = null;
  #delivered: { resolve: (n: number) => void; reject: (e: Error) => void } | null = null;
  /** The device write ended before the payload was whole (stopDelivering): the rest is a write of its own. */
  #isCutShort = false;
  /** The connection closed before the payload was whole. */
  #isGone = false;
  #whole: { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void };

  /** Takes what the queue holds of the payload, as views. */
  constructor(header: w.RequestHeader, queue: ByteQueue) {
    this.header = header;
    this.length = header.length;
    this.head = queue.takeChunks(queue.length);
    this.buffer = ioBuffers.acquire(header.length - totalLength(this.head));
    this.#bufferOffset = header.offset + totalLength(this.head);
    let resolve = (): void => undefined;
    let reject = (_e: Error): void => undefined;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined);
    this.#whole = { promise, resolve, reject };
  }

  /** Hands the head at once, then each part as it comes; see IncomingParts. */
  deliver(land: (part: Uint8Array) => void): Promise<number> {
    if (this.#isGone) return Promise.reject(new Error('the client went away during the write'));
    for (const chunk of this.head) land(chunk);
    this.#land = land;
    const delivered = new Promise<number>((resolve, reject) => (this.#delivered = { resolve, reject }));
    this.#landParts();
    return delivered;
  }

  /** Whether parts are being handed to the device now. */
  get isDelivering(): boolean {
    return this.#land !== null;
  }

  /** Where the socket reads next: the unfilled rest of the buffer. */
  get target(): Buffer {
    return this.buffer.subarray(this.filled);
  }

  /** `n` more bytes are in the buffer; hands a part over when enough came. True once the payload is whole. */
  received(n: number): boolean {
    this.filled += n;
    const isWhole = this.filled === this.buffer.length;
    if (isWhole || this.filled - this.#landed >= nbdIo.streamPartMinimum) this.#landParts();
    if (isWhole) this.#whole.resolve();
    return isWhole;
  }

  /**
   * The client sends nothing: what landed stays, the device write ends (a take waiting for it goes
   * on), and writeTo() writes the rest as a write of its own once it came.
   */
  stopDelivering(): void {
    if (this.#land === null) return;
    this.#isCutShort = true;
    this.#end();
  }

  /** Writes the payload to the device as it comes: settles once every part landed (the rest too, when cut short). */
  async writeTo(device: BlockDevice, flags: IoFlags): Promise<void> {
    await device.write(this.header.offset, this, flags);
    if (!this.#isCutShort) return;
    await this.#whole.promise;
    const rest = this.buffer.subarray(this.#landed);
    if (rest.length > 0) await device.write(this.#bufferOffset + this.#landed, rest, flags & ~IoFlag.Background);
  }

  /** The connection is gone: the device write ends with the parts it has (a client gone mid-write leaves a prefix). */
  dispose(): void {
    this.#isGone = true;
    const delivered = this.#delivered;
    this.#land = null;
    this.#delivered = null;
    delivered?.reject(new Error('the client went away during the write'));
    this.#whole.reject(new Error('the client went away during the write'));
  }

  /** The buffers go back (after every write of them settled). */
  release(): void {
    for (const chunk of this.head) ioBuffers.release(chunk);
    ioBuffers.release(this.buffer);
  }

  #landParts(): void {
    const land = this.#land;
    if (land === null) return;
    if (this.filled > this.#landed) {
      const part = this.buffer.subarray(this.#landed, this.filled);
      this.#landed = this.filled;
      land(part);
    }
    if (this.#landed === this.buffer.length) this.#end();
  }

  /** No more parts for the device: its write ends with what it was handed. */
  #end(): void {
    const delivered = this.#delivered;
    this.#land = null;
    this.#delivered = null;
    delivered?.resolve(totalLength(this.head) + this.#landed);
  }
}
