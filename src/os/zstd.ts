// Owns zstd compression through the system's libzstd (koffi): one call per chunk, usable in worker threads.
import { BlkError } from '../errors.js';
import { koffi } from './koffi.js';

const lib = koffi.load('libzstd.so.1');
const compressFn = lib.func('size_t ZSTD_compress(void *dst, size_t dstCapacity, const void *src, size_t srcSize, int level)');
const decompressFn = lib.func('size_t ZSTD_decompress(void *dst, size_t dstCapacity, const void *src, size_t compressedSize)');
const boundFn = lib.func('size_t ZSTD_compressBound(size_t srcSize)');
const isErrorFn = lib.func('unsigned int ZSTD_isError(size_t code)');
const errorNameFn = lib.func('const char *ZSTD_getErrorName(size_t code)');
const contentSizeFn = lib.func('unsigned long long ZSTD_getFrameContentSize(const void *src, size_t srcSize)');

/** zstd's frame magic number, little-endian: what every compressed chunk file starts with. */
export const ZSTD_MAGIC = 0xfd2fb528;

function checked(result: unknown, what: string): number {
  const n = Number(result);
  if (isErrorFn(result)) throw new BlkError('EIO', `zstd ${what}: ${String(errorNameFn(result))}`);
  return n;
}

/** Compresses `src` at `level` into a new buffer; returns its used part. */
export function zstdCompress(src: Uint8Array, level: number): Buffer {
  const dst = Buffer.allocUnsafe(Number(boundFn(src.length)));
  const n = checked(compressFn(dst, dst.length, src, src.length, level), 'compress');
  return dst.subarray(0, n);
}

/** Decompresses a whole zstd frame of `size` bytes into `into` (exactly that many bytes, else EIO). */
export function zstdDecompress(src: Uint8Array, into: Uint8Array): void {
  const n = checked(decompressFn(into, into.length, src, src.length), 'decompress');
  if (n !== into.length) throw new BlkError('EIO', `zstd decompress: ${n} bytes, expected ${into.length}`);
}

/** The decompressed size a zstd frame declares; EIO when it declares none or is not a frame. */
export function zstdContentSize(frame: Uint8Array, maximum: number): number {
  const n = Number(contentSizeFn(frame, frame.length));
  // ZSTD_CONTENTSIZE_UNKNOWN and _ERROR are the two largest 64-bit values.
  if (!(n >= 0 && n <= maximum)) throw new BlkError('EIO', 'zstd frame without a usable content size');
  return n;
}
