// Owns zstd compression through the system's libzstd (koffi): one call per chunk, usable in worker threads.
// Each thread keeps one compression and one decompression context: a one-shot call would allocate and
// clear the context's tables for every chunk, which cost a third of level 3's time on 64 KiB chunks.
import { BlkError } from '../errors.js';
import { koffi } from './koffi.js';

const lib = koffi.load('libzstd.so.1');
const createCCtx = lib.func('void *ZSTD_createCCtx()');
const createDCtx = lib.func('void *ZSTD_createDCtx()');
const compressFn = lib.func('size_t ZSTD_compressCCtx(void *cctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize, int level)');
const compressOnceFn = lib.func('size_t ZSTD_compress(void *dst, size_t dstCapacity, const void *src, size_t srcSize, int level)');
const decompressFn = lib.func('size_t ZSTD_decompressDCtx(void *dctx, void *dst, size_t dstCapacity, const void *src, size_t compressedSize)');
const boundFn = lib.func('size_t ZSTD_compressBound(size_t srcSize)');
const isErrorFn = lib.func('unsigned int ZSTD_isError(size_t code)');
const errorNameFn = lib.func('const char *ZSTD_getErrorName(size_t code)');


function checked(result: unknown, what: string): number {
  const n = Number(result);
  if (isErrorFn(result)) throw new BlkError('EIO', `zstd ${what}: ${String(errorNameFn(result))}`);
  return n;
}

// This thread's contexts (module state is per thread), made on first use and kept for its life.
let cctx: unknown = null;
let dctx: unknown = null;

/** The most bytes zstd may write for `size` bytes of input. */
export function zstdBound(size: number): number {
  return Number(boundFn(size));
}

/** Compresses `src` at `level` into `into` (at least zstdBound(src.length) bytes); returns the bytes written. */
export function zstdCompressInto(src: Uint8Array, level: number, into: Uint8Array): number {
  cctx ??= createCCtx();
  return checked(compressFn(cctx, into, into.length, src, src.length, level), 'compress');
}

/**
 * Compresses `src` at `level` in the thread pool, off the calling thread's event loop (a context of
 * its own each time: the pool's threads share none); resolves with the compressed bytes. `src` must
 * not change until it resolves.
 */
export function zstdCompressAsync(src: Uint8Array, level: number): Promise<Buffer> {
  const into = Buffer.allocUnsafe(zstdBound(src.length));
  return new Promise((resolve, reject) => {
    compressOnceFn.async(into, into.length, src, src.length, level, (err: unknown, result: unknown) => {
      if (err) return reject(err instanceof Error ? err : new Error(String(err)));
      try {
        resolve(into.subarray(0, checked(result, 'compress')));
      } catch (e) {
        reject(e);
      }
    });
  });
}

/** Decompresses a whole zstd frame of `size` bytes into `into` (exactly that many bytes, else EIO). */
export function zstdDecompress(src: Uint8Array, into: Uint8Array): void {
  dctx ??= createDCtx();
  const n = checked(decompressFn(dctx, into, into.length, src, src.length), 'decompress');
  if (n !== into.length) throw new BlkError('EIO', `zstd decompress: ${n} bytes, expected ${into.length}`);
}
