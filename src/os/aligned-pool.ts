// Owns reusable memory for O_DIRECT I/O: aligned buffers handed out again, so the disk reads into
// pages already backed (a new page costs a fault, on this VM one in the host too).
import { alignedBuffer } from './koffi.js';

export class AlignedBufferPool {
  /** Free buffers, each whole from its aligned start. */
  #free: Buffer[] = [];
  #keptBytes = 0;
  readonly maximumKeptBytes: number;

  constructor(maximumKeptBytes: number) {
    this.maximumKeptBytes = maximumKeptBytes;
  }

  /** `bytes` of memory at an aligned address: the start of a free buffer at least as large, else new. */
  acquire(bytes: number): Buffer {
    const i = this.#free.findIndex((b) => b.length >= bytes);
    if (i < 0) return alignedBuffer(bytes);
    const [kept] = this.#free.splice(i, 1) as [Buffer];
    this.#keptBytes -= kept.length;
    return kept.subarray(0, bytes);
  }

  /** Takes back a buffer from acquire(); the caller must not touch it afterwards. */
  release(b: Buffer): void {
    // The whole buffer from the view's start (its aligned start): a later acquire may use all of it.
    const whole = Buffer.from(b.buffer, b.byteOffset, b.buffer.byteLength - b.byteOffset);
    if (this.#keptBytes + whole.length > this.maximumKeptBytes) return;
    this.#free.push(whole);
    this.#keptBytes += whole.length;
  }
}
