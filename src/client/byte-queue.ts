// Owns the bytes a client socket delivered and not yet parsed: appended as they come, taken in exact
// pieces, copied only when a piece spans two deliveries.

export class ByteQueue {
  #chunks: Buffer[] = [];
  #head = 0;
  length = 0;

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The next `n` bytes without taking them (null while fewer have come). */
  peek(n: number): Buffer | null {
    if (this.length < n) return null;
    if (n === 0) return Buffer.alloc(0);
    const first = this.#chunks[0] as Buffer;
    if (first.length - this.#head >= n) return first.subarray(this.#head, this.#head + n);
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    let i = 0;
    let at = this.#head;
    while (done < n) {
      const c = this.#chunks[i++] as Buffer;
      const k = Math.min(n - done, c.length - at);
      c.copy(out, done, at, at + k);
      done += k;
      at = 0;
    }
    return out;
  }

  /** Takes the next `n` bytes (null while fewer have come). */
  take(n: number): Buffer | null {
    const out = this.peek(n);
    if (out !== null) this.skip(n);
    return out;
  }

  /** Copies the next `n` bytes into `into` at `at` and takes them. */
  takeInto(n: number, into: Buffer, at: number): void {
    let done = 0;
    while (done < n) {
      const c = this.#chunks[0] as Buffer;
      const k = Math.min(n - done, c.length - this.#head);
      c.copy(into, at + done, this.#head, this.#head + k);
      done += k;
      this.skip(k);
    }
  }

  skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const c = this.#chunks[0] as Buffer;
      const left = c.length - this.#head;
      if (n < left) {
        this.#head += n;
        return;
      }
      n -= left;
      this.#chunks.shift();
      this.#head = 0;
    }
  }
}
