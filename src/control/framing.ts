// Owns newline-delimited message framing: bytes in, whole lines out, never more than a bounded line.
import { BlkError } from '../errors.js';

/**
 * Splits a byte stream into lines. `push()` returns the complete lines; an unfinished line waits
 * for more bytes. A line longer than `maximumLineLength` is an error (EINVAL), so a peer that never
 * sends a newline cannot grow the buffer without bound.
 */
export class LineFramer {
  /** The pieces of the unfinished line, joined only when its newline comes: a line sent in many small pieces costs linear time. */
  #pieces: string[] = [];
  #partialLength = 0;
  #maximumLineLength: number;

  constructor(maximumLineLength: number) {
    this.#maximumLineLength = maximumLineLength;
  }

  push(chunk: string): string[] {
    const lines: string[] = [];
    let from = 0;
    for (let newline = chunk.indexOf('\n'); newline >= 0; newline = chunk.indexOf('\n', from)) {
      this.#add(chunk, from, newline);
      const line = this.#pieces.length === 1 ? (this.#pieces[0] as string) : this.#pieces.join('');
      this.#pieces = [];
      this.#partialLength = 0;
      if (line.trim() !== '') lines.push(line);
      from = newline + 1;
    }
    this.#add(chunk, from, chunk.length);
    return lines;
  }

  #add(chunk: string, from: number, to: number): void {
    if (to === from) return;
    this.#partialLength += to - from;
    if (this.#partialLength > this.#maximumLineLength) {
      this.#pieces = [];
      this.#partialLength = 0;
      throw new BlkError('EINVAL', `control message longer than ${this.#maximumLineLength} bytes`);
    }
    this.#pieces.push(from === 0 && to === chunk.length ? chunk : chunk.slice(from, to));
  }
}
