// Owns HMAC-SHA-256 through libcrypto's one-shot HMAC(): node:crypto's createHmac makes two objects
// per call, which costs 5 % of the rate on 64 KiB chunks (docs/performance.md); this runs at SHA-256's.
import { BlkError } from '../errors.js';
import type { KoffiFunction } from './koffi.js';
import { libcrypto } from './libcrypto.js';

const sha256Method = libcrypto.func('const void *EVP_sha256()')();
const hmac: KoffiFunction = libcrypto.func('void *HMAC(const void *md, const void *key, int keyLength, const void *data, size_t length, void *out, void *outLength)');
export const HMAC_SHA256_BYTES = 32;
const reported = new Uint32Array(1);

/** HMAC-SHA-256 of `data` under `key`, in a new 32-byte buffer. */
export function hmacSha256(key: Uint8Array, data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HMAC_SHA256_BYTES);
  if (!hmac(sha256Method, key, key.length, data, data.length, out, reported)) throw new BlkError('EIO', 'HMAC-SHA-256 (libcrypto) failed');
  return out;
}
