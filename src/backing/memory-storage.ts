// Owns an in-memory backing store: the fake that unit tests of the core run over.
import { BlkError } from '../errors.js';
import type { Extent, Storage, StorageCapabilities, StorageFastPaths } from './storage.js';

export class MemoryStorage implements Storage {
  readonly path: string;
  readonly can: StorageCapabilities;
  bytes: Uint8Array;
  flushCount = 0;
  /** None by default (a plain store); withFastPaths() gives it the page-cache paths a file store has. */
  fast?: StorageFastPaths;

  constructor(size: number, options: { path?: string; readOnly?: boolean } = {}) {
    this.bytes = new Uint8Array(size);
    this.path = options.path ?? 'memory';
    this.can = { isBlockDevice: false, isReadOnly: options.readOnly ?? false, grow: true };
  }

  get size(): number {
    return this.bytes.length;
  }

  probeSize(): number {
    return this.bytes.length;
  }

  /**
   * Gives this store fast paths as a page cache holding all of it would: reads, writes and copies
   * to another memory store at once. Tests override single paths (to decline at random, to fail).
   */
  withFastPaths(overrides: Partial<StorageFastPaths> = {}): this {
    const fast: StorageFastPaths = {
      readNow: (offset, into) => {
        this.#check(offset, into.length);
        into.set(this.bytes.subarray(offset, offset + into.length));
        return true;
      },
      isCached: () => true,
      sendTo: () => {
        throw new BlkError('ENOTSUP', 'a memory store has no descriptor to send from');
      },
      writeNow: (offset, data) => {
        this.#check(offset, data.length);
        this.bytes.set(data, offset);
        return true;
      },
      copyToNow: (offset, length, target, targetOffset) => {
        if (!(target instanceof MemoryStorage)) return false;
        target.bytes.set(this.bytes.subarray(offset, offset + length), targetOffset);
        return true;
      },
      writeChunks: async (offset, chunks) => {
        let at = offset;
        for (const c of chunks) {
          await this.write(at, c);
          at += c.length;
        }
      },
    };
    this.fast = { ...fast, ...overrides };
    return this;
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

  /** Grows the store to hold [offset, offset+length), as fallocate extends a file. */
  async grow(offset: number, length: number): Promise<void> {
    if (offset + length > this.bytes.length) this.resize(offset + length);
  }

  identity(): null {
    return null;
  }

  async close(): Promise<void> {}

  #check(offset: number, length: number): void {
    if (offset + length > this.bytes.length) throw new BlkError('EIO', `memory store: ${offset}+${length} past ${this.bytes.length}`);
  }
}
