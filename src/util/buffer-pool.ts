// Owns reusable I/O buffers: large request and reply buffers are recycled instead of allocated per request.
import { buffers } from '../params.js';


/**
 * Fresh large Buffers cost page faults on first touch (the allocator maps new memory for each),
 * which dominated 1 MiB requests. Buffers are kept in power-of-two classes from 64 KiB up; a
 * class holds a bounded number, so the pool never keeps more than about `maximumBytes`.
 */
export class BufferPool {
  #free = new Map<number, Buffer[]>();
  #keptBytes = 0;
  /** The backing stores this pool allocated: the only ones release() takes. */
  #own = new WeakSet<ArrayBufferLike>();
  #slab = Buffer.allocUnsafeSlow(buffers.slabBytes);
  #slabUsed = 0;
  readonly maximumBytes: number;
  static readonly minimumPooledSize = 64 * 1024;

  constructor(maximumBytes: number) {
    this.maximumBytes = maximumBytes;
  }

  /** A buffer of exactly `size` bytes (a view of a pooled one when large). Contents are undefined. */
  acquire(size: number): Buffer {
    if (size < BufferPool.minimumPooledSize) return this.#carve(size);
    const capacity = 2 ** Math.ceil(Math.log2(size));
    const list = this.#free.get(capacity);
    const pooled = list?.pop();
    if (pooled) {
      this.#keptBytes -= capacity;
      return pooled.subarray(0, size);
    }
    const fresh = Buffer.allocUnsafeSlow(capacity);
    this.#own.add(fresh.buffer);
    return fresh.subarray(0, size);
  }

  /**
   * A small buffer cut from a shared slab: a 4 KiB reply (over Node's own pool limit of 4 KiB)
   * would otherwise cost a malloc and a free every request. The slab lives while any piece does.
   */
  #carve(size: number): Buffer {
    if (this.#slabUsed + size > buffers.slabBytes) {
      this.#slab = Buffer.allocUnsafeSlow(buffers.slabBytes);
      this.#slabUsed = 0;
    }
    const piece = this.#slab.subarray(this.#slabUsed, this.#slabUsed + size);
    this.#slabUsed = (this.#slabUsed + size + 7) & ~7;
    return piece;
  }

  /** Whether release() would keep this buffer (small ones are left to the garbage collector). */
  isPooled(b: Buffer): boolean {
    return b.length >= BufferPool.minimumPooledSize && this.#own.has(b.buffer);
  }

  /** Gives a buffer from `acquire` back; the caller must not touch it afterwards. */
  release(b: Buffer): void {
    // Only what acquire() made: a view of another buffer (a receive arena) must never be handed out again.
    if (b.length < BufferPool.minimumPooledSize || !this.#own.has(b.buffer)) return;
    const whole = Buffer.from(b.buffer, b.byteOffset, b.buffer.byteLength - b.byteOffset);
    const capacity = whole.length;
    if (b.byteOffset !== 0 || capacity & (capacity - 1) || this.#keptBytes + capacity > this.maximumBytes) return;
    let list = this.#free.get(capacity);
    if (!list) {
      list = [];
      this.#free.set(capacity, list);
    }
    list.push(whole);
    this.#keptBytes += capacity;
  }
}

/** The process-wide pool of NBD payload buffers. */
export const ioBuffers = new BufferPool(128 * 1024 * 1024);
