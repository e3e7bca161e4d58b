// Owns the one FFI the project uses (koffi), typed as far as the project calls it: libc, libzstd and libcrypto load through it.
import { createRequire } from 'node:module';

export interface KoffiFunction {
  (...args: unknown[]): unknown;
  async(...args: unknown[]): void;
}
export interface KoffiLib {
  func(signature: string): KoffiFunction;
}
export interface Koffi {
  load(path: string): KoffiLib;
  errno(): number;
  struct(name: string, fields: Record<string, string>): unknown;
  /** The address of a typed array's first byte (its offset included). */
  address(value: unknown): bigint;
  /** An ArrayBuffer over `length` bytes of native memory at `pointer` (kept alive by the caller). */
  view(pointer: unknown, length: number): ArrayBuffer;
}

export const koffi = createRequire(import.meta.url)('koffi') as Koffi;

/** Offsets, lengths and buffer addresses of O_DIRECT I/O: the largest logical block size in use. */
export const DIRECT_ALIGNMENT = 4096;

/** `bytes` of new memory that begins at a `DIRECT_ALIGNMENT`-aligned address, for O_DIRECT I/O. */
export function alignedBuffer(bytes: number): Buffer {
  const raw = Buffer.allocUnsafeSlow(bytes + DIRECT_ALIGNMENT);
  const skip = bytesToAlignment(raw, DIRECT_ALIGNMENT);
  return raw.subarray(skip, skip + bytes);
}

/** How many bytes from the start of `view` to its first `alignment`-aligned address (a power of two). */
export function bytesToAlignment(view: ArrayBufferView, alignment: number): number {
  return (alignment - Number(koffi.address(view) % BigInt(alignment))) % alignment;
}
