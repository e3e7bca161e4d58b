// Owns the one FFI the project uses (koffi), typed as far as the project calls it: libc and libzstd load through it.
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
  address(value: ArrayBufferView | unknown): bigint;
  /** An ArrayBuffer over `length` bytes of native memory at `pointer` (kept alive by the caller). */
  view(pointer: unknown, length: number): ArrayBuffer;
}

export const koffi = createRequire(import.meta.url)('koffi') as Koffi;
