// Owns an in-memory backing store: the fake that unit tests of the core run over.
import { BlkError } from '../errors.js';
import type { Extent, Storage } from './storage.js';

export class MemoryStorage implements Storage {
  readonly path: string;
  readonly isBlockDevice = false;
  readonly isReadOnly: boolean;
  bytes: Uint8Array;
  flushCount = 0;

  constructor(size: number, options: { path?: string; readOnly?: boolean } = {}) {
    this.bytes = new Uint8Array(size);
    this.path = options.path ?? 'memory';
    this.isReadOnly = options.readOnly ?? false;
  }

  get size(): number {
    return this.bytes.length;
  }

  probeSize(): number {
    return this.bytes.length;
  }

  /** Changes the capacity, as a resized file or block device would. */
  resize(size: number): void {
    const next = new Uint8Array(size);
    next.set(this.bytes.subarray(0, Math.min(size, this.bytes.length)));
    this.bytes = next;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.#check(offset, into.length);
    into.set(this.bytes.subarray(offset, offset + into.length));
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#check(offset, data.length);
    this.bytes.set(data, offset);
  }

  async flush(): Promise<void> {
    this.flushCount++;
  }

  async trim(offset: number, length: number): Promise<void> {
    this.#check(offset, length);
    this.bytes.fill(0, offset, offset + length);
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.trim(offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, isHole: false, isZero: false }];
  }

  async cache(): Promise<void> {}

  async close(): Promise<void> {}

  #check(offset: number, length: number): void {
    if (offset + length > this.bytes.length) throw new BlkError('EIO', `memory store: ${offset}+${length} past ${this.bytes.length}`);
  }
}
