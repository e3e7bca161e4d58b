// Owns an object built by appends in memory and handed on in parts as each fills (an object store's
// multipart upload, sent by another thread): no local file, and memory of one part at a time.
import { createHash } from 'node:crypto';

/** A filled part: its number (from 1), its bytes (a buffer of its own, to be moved to another thread) and their MD5 in base64. */
export interface FilledPart {
  n: number;
  data: Uint8Array;
  md5: string;
  /** The object's last part. */
  last: boolean;
}

/** Room past a part's end that a record filled in place may run into (never more than a part); a larger record is copied in. */
function slackOf(partBytes: number): number {
  return Math.min(1024 * 1024, partBytes);
}

/** The bytes of a part's buffer: its part and the slack. */
export function partBufferBytes(partBytes: number): number {
  return partBytes + slackOf(partBytes);
}

export class PartStream {
  /** Bytes appended so far: the object's length once finished. */
  size = 0;
  readonly #partBytes: number;
  readonly #emit: (part: FilledPart) => void;
  readonly #newBuffer: () => Buffer;
  #buffer: Buffer;
  #staged = 0;
  #parts = 0;
  #scratch = Buffer.alloc(0);

  /**
   * `newBuffer` gives a part's buffer (partBufferBytes long, an ArrayBuffer of its own): one sent
   * before and given back, where it can, since memory used again costs no new pages.
   */
  constructor(partBytes: number, emit: (part: FilledPart) => void, newBuffer: () => Buffer = () => Buffer.allocUnsafeSlow(partBufferBytes(partBytes))) {
    this.#partBytes = partBytes;
    this.#emit = emit;
    this.#newBuffer = newBuffer;
    this.#buffer = newBuffer();
  }

  append(data: Uint8Array): void {
    for (let done = 0; done < data.length; ) {
      if (this.#staged >= this.#partBytes) this.#send(false);
      const n = Math.min(data.length - done, this.#partBytes - this.#staged);
      this.#buffer.set(data.subarray(done, done + n), this.#staged);
      this.#staged += n;
      done += n;
      this.size += n;
    }
  }

  /** Appends what `fill` writes into a view of at least `maximum` bytes, in place where the part has room (no copy). */
  appendInPlace(maximum: number, fill: (into: Buffer) => number): void {
    if (maximum > slackOf(this.#partBytes)) {
      if (this.#scratch.length < maximum) this.#scratch = Buffer.allocUnsafe(maximum);
      this.append(this.#scratch.subarray(0, fill(this.#scratch.subarray(0, maximum))));
      return;
    }
    // A full part goes only once more bytes come, so that the last part is never empty. After that
    // fewer than slack bytes are staged (slack <= a part), and the slack takes any record up to its size.
    if (this.#staged >= this.#partBytes) this.#send(false);
    const n = fill(this.#buffer.subarray(this.#staged, this.#staged + maximum));
    this.#staged += n;
    this.size += n;
  }

  /** Sends the last part (the whole object, where it never filled one). */
  finish(): void {
    if (this.#staged > this.#partBytes) this.#send(false);
    this.#send(true);
  }

  /** Drops what is not sent (a failed backup). */
  close(): void {
    this.#staged = 0;
  }

  /** Sends the part's first partBytes (all at the end) and starts the next with what ran past it. */
  #send(last: boolean): void {
    const length = last ? this.#staged : this.#partBytes;
    const full = this.#buffer;
    const over = this.#staged - length;
    // After the last part nothing more comes: no buffer is taken for it (one of shared memory would stay taken).
    this.#buffer = last ? Buffer.alloc(0) : this.#newBuffer();
    if (over > 0) full.copy(this.#buffer, 0, length, this.#staged);
    this.#staged = over;
    const data = new Uint8Array(full.buffer, full.byteOffset, length);
    this.#emit({ n: ++this.#parts, data, md5: createHash('md5').update(data).digest('base64'), last });
  }
}
