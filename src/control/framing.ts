// Owns newline-delimited message framing: bytes in, whole lines out, never more than a bounded line.
import { BlkError } from '../errors.js';

/**
 * Splits a byte stream into lines. `push()` returns the complete lines; an unfinished line waits
 * for more bytes. A line longer than `maximumLineLength` is an error (EINVAL), so a peer that never
 * sends a newline cannot grow the buffer without bound.
 */
export class LineFramer {
  #partial = '';
  #maximumLineLength: number;

  constructor(maximumLineLength: number) {
    this.#maximumLineLength = maximumLineLength;
  }

  push(chunk: string): string[] {
    const parts = (this.#partial + chunk).split('\n');
    this.#partial = parts.pop() ?? '';
    if (this.#partial.length > this.#maximumLineLength || parts.some((p) => p.length > this.#maximumLineLength)) {
      this.#partial = '';
      throw new BlkError('EINVAL', `control message longer than ${this.#maximumLineLength} bytes`);
    }
    return parts.filter((p) => p.trim() !== '');
  }
}
