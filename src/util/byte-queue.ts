// Owns the receive buffer of a stream parser: chunks as they came, read out without copying where possible.

/**
 * A FIFO of received chunks. `take(n)` returns a view into the chunk when the bytes lie in one
 * (the common case for payloads), and copies only when they span chunks.
 */
/** The bytes in a list of pieces (a payload received in several chunks). */
export function totalLength(chunks: readonly Uint8Array[]): number {
  let n = 0;
  for (const c of chunks) n += c.length;
  return n;
}

export class ByteQueue {
  #chunks: Buffer[] = [];
  #head = 0;
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /**
   * The first n bytes (n <= length) without consuming them: a view when they lie in one chunk,
   * else a copy into a buffer from `pool` (the caller releases it) or a new one.
   */
  peek(n: number, pool?: { acquire(size: number): Buffer }): Buffer {
    const first = this.#chunks[0];
    if (first && first.length - this.#head >= n) return first.subarray(this.#head, this.#head + n);
    const out = pool ? pool.acquire(n) : Buffer.allocUnsafe(n);
    this.#copyOut(out, n);
    return out;
  }

  /** Consumes the first n bytes (n <= length), copying them to the start of `into`. */
  takeInto(into: Buffer, n: number): void {
    this.#copyOut(into, n);
    this.skip(n);
  }

  #copyOut(out: Buffer, n: number): void {
    let filled = 0;
    let head = this.#head;
    for (const chunk of this.#chunks) {
      if (filled === n) break;
      const part = Math.min(chunk.length - head, n - filled);
      chunk.copy(out, filled, head, head + part);
      filled += part;
      head = 0;
    }
  }

  /** Consumes and returns the first n bytes (n <= length). */
  take(n: number, pool?: { acquire(size: number): Buffer }): Buffer {
    const out = this.peek(n, pool);
    this.skip(n);
    return out;
  }

  /** True when the first n bytes lie in one received chunk. */
  isContiguous(n: number): boolean {
    const first = this.#chunks[0];
    return first !== undefined && first.length - this.#head >= n;
  }

  /** Consumes the first n bytes (n <= length) as views of the chunks they arrived in: no copy. */
  takeChunks(n: number): Buffer[] {
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const first = this.#chunks[0] as Buffer;
      const part = Math.min(first.length - this.#head, left);
      out.push(first.subarray(this.#head, this.#head + part));
      this.skip(part);
      left -= part;
    }
    return out;
  }

  /** Drops up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    let left = Math.min(n, this.#length);
    const dropped = left;
    while (left > 0) {
      const first = this.#chunks[0] as Buffer;
      const available = first.length - this.#head;
      if (available > left) {
        this.#head += left;
        left = 0;
      } else {
        this.#chunks.shift();
        this.#head = 0;
        left -= available;
      }
    }
    this.#length -= dropped;
    return dropped;
  }

  clear(): void {
    this.#chunks = [];
    this.#head = 0;
    this.#length = 0;
  }
}
