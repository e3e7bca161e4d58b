// Owns reusable I/O buffers: large request and reply buffers are recycled instead of allocated per request.
import { buffers } from '../params.js';
import { bytesToAlignment, DIRECT_ALIGNMENT } from '../os/koffi.js';


/**
 * Fresh large Buffers cost page faults on first touch (the allocator maps new memory for each),
 * which dominated 1 MiB requests. Buffers are kept in power-of-two classes from 64 KiB up; a
 * class holds a bounded number, so the pool never keeps more than about `maximumBytes`. Each
 * large one has DIRECT_ALIGNMENT bytes to spare, so that any byte of it can be placed on an
 * aligned address (a read reply's data, read straight from the disk with O_DIRECT).
 */
export class BufferPool {
  #free = new Map<number, Buffer[]>();
  #keptBytes = 0;
  /**
   * Where the view handed out of each of this pool's buffers begins, while it is out: release()
   * takes that view only, once (not a view of memory the pool did not allocate, a receive arena).
   */
  #handedOut = new WeakMap<ArrayBufferLike, number>();
  /** Each of this pool's buffers: bytes from its start to the next aligned address (asked of the FFI once, at allocation). */
  #toAlignment = new WeakMap<ArrayBufferLike, number>();
  #slab = Buffer.allocUnsafeSlow(buffers.slabBytes);
  #slabUsed = 0;
  readonly maximumBytes: number;
  static readonly minimumPooledSize = 64 * 1024;

  constructor(maximumBytes: number) {
    this.maximumBytes = maximumBytes;
  }

  /**
   * A buffer of exactly `size` bytes (a view of a pooled one when large). Contents are undefined.
   * A large one's byte `alignedAt` is at a DIRECT_ALIGNMENT-aligned address.
   */
  acquire(size: number, alignedAt = 0): Buffer {
    if (size < BufferPool.minimumPooledSize) return this.#carve(size);
    const capacity = 2 ** Math.ceil(Math.log2(size));
    const list = this.#free.get(capacity);
    let whole = list?.pop();
    if (whole) this.#keptBytes -= capacity;
    else {
      whole = Buffer.allocUnsafeSlow(capacity + DIRECT_ALIGNMENT);
      this.#toAlignment.set(whole.buffer, bytesToAlignment(whole, DIRECT_ALIGNMENT));
    }
    const skip = ((((this.#toAlignment.get(whole.buffer) as number) - alignedAt) % DIRECT_ALIGNMENT) + DIRECT_ALIGNMENT) % DIRECT_ALIGNMENT;
    this.#handedOut.set(whole.buffer, skip);
    return whole.subarray(skip, skip + size);
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
    return b.length >= BufferPool.minimumPooledSize && this.#handedOut.get(b.buffer) === b.byteOffset;
  }

  /** Gives a buffer from `acquire` back; the caller must not touch it afterwards. */
  release(b: Buffer): void {
    if (!this.isPooled(b)) return;
    this.#handedOut.delete(b.buffer);
    const whole = Buffer.from(b.buffer);
    const capacity = whole.length - DIRECT_ALIGNMENT;
    if (this.#keptBytes + capacity > this.maximumBytes) return;
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
