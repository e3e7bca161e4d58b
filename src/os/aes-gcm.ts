// Owns AES-256-GCM through the system's libcrypto (koffi), sealing into and opening into buffers the
// caller gives: node:crypto's ciphers return a new buffer for every call, and on a repository's
// chunk path that allocation, and the copy out of it, cost more than the cipher (docs/performance.md).
// One EVP context per key and direction, made on first use and kept; module state is per thread.
import { BlkError } from '../errors.js';
import type { KoffiFunction } from './koffi.js';
import { libcrypto as lib } from './libcrypto.js';

const newContext = lib.func('void *EVP_CIPHER_CTX_new()');
const freeContext = lib.func('void EVP_CIPHER_CTX_free(void *ctx)');
const aes256Gcm = lib.func('const void *EVP_aes_256_gcm()');
const cipherInit: KoffiFunction = lib.func('int EVP_CipherInit_ex(void *ctx, const void *cipher, void *engine, const void *key, const void *iv, int enc)');
const cipherUpdate: KoffiFunction = lib.func('int EVP_CipherUpdate(void *ctx, void *out, void *outLength, const void *input, int inputLength)');
const cipherFinal: KoffiFunction = lib.func('int EVP_CipherFinal_ex(void *ctx, void *out, void *outLength)');
const contextControl: KoffiFunction = lib.func('int EVP_CIPHER_CTX_ctrl(void *ctx, int type, int arg, void *ptr)');

const EVP_CTRL_AEAD_GET_TAG = 0x10;
const EVP_CTRL_AEAD_SET_TAG = 0x11;
export const GCM_KEY_BYTES = 32;
export const GCM_NONCE_BYTES = 12;
export const GCM_TAG_BYTES = 16;
/** The largest piece one EVP call takes (its length is an int). */
const PIECE_BYTES = 1 << 30;

/** Where EVP writes the lengths it reports (GCM is a stream mode: always the input's length). */
const reported = new Int32Array(1);

/** AES-256-GCM under one key: seal() and open() write into the caller's buffers. */
export class AesGcm {
  #key: Buffer;
  #sealing: unknown = null;
  #opening: unknown = null;

  constructor(key: Uint8Array) {
    if (key.length !== GCM_KEY_BYTES) throw new BlkError('EINVAL', `an AES-256 key is ${GCM_KEY_BYTES} bytes, not ${key.length}`);
    this.#key = Buffer.from(key);
  }

  #context(sealing: boolean): unknown {
    let ctx = sealing ? this.#sealing : this.#opening;
    if (ctx !== null) return ctx;
    ctx = newContext();
    if (!ctx) throw new BlkError('ENOMEM', 'EVP_CIPHER_CTX_new failed');
    if (cipherInit(ctx, aes256Gcm(), null, this.#key, null, sealing ? 1 : 0) !== 1) {
      freeContext(ctx);
      throw new BlkError('EIO', 'EVP_CipherInit_ex (AES-256-GCM) failed');
    }
    if (sealing) this.#sealing = ctx;
    else this.#opening = ctx;
    return ctx;
  }

  /** Encrypts `plain` into `out` (its length), bound to `aad`; the tag into `tag` (16 bytes). */
  seal(nonce: Uint8Array, aad: Uint8Array, plain: Uint8Array, out: Uint8Array, tag: Uint8Array): void {
    const ctx = this.#run(true, nonce, aad, plain, out);
    if (cipherFinal(ctx, out, reported) !== 1 || contextControl(ctx, EVP_CTRL_AEAD_GET_TAG, GCM_TAG_BYTES, tag) !== 1) throw new BlkError('EIO', 'AES-256-GCM sealing failed');
  }

  /** Decrypts `sealed` into `out` (its length) and checks `tag` and `aad`: false when they do not hold (`out` is then garbage). */
  open(nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array, tag: Uint8Array, out: Uint8Array): boolean {
    const ctx = this.#run(false, nonce, aad, sealed, out);
    if (contextControl(ctx, EVP_CTRL_AEAD_SET_TAG, GCM_TAG_BYTES, tag) !== 1) throw new BlkError('EIO', 'AES-256-GCM: setting the tag failed');
    return cipherFinal(ctx, out, reported) === 1;
  }

  #run(sealing: boolean, nonce: Uint8Array, aad: Uint8Array, input: Uint8Array, out: Uint8Array): unknown {
    if (nonce.length !== GCM_NONCE_BYTES || out.length !== input.length) throw new BlkError('EINVAL', 'AES-256-GCM: a nonce is 12 bytes and the output as long as the input');
    const ctx = this.#context(sealing);
    if (cipherInit(ctx, null, null, null, nonce, -1) !== 1) throw new BlkError('EIO', 'AES-256-GCM: setting the nonce failed');
    if (aad.length > 0 && cipherUpdate(ctx, null, reported, aad, aad.length) !== 1) throw new BlkError('EIO', 'AES-256-GCM: the associated data failed');
    for (let at = 0; at < input.length; at += PIECE_BYTES) {
      const end = Math.min(input.length, at + PIECE_BYTES);
      if (cipherUpdate(ctx, out.subarray(at, end), reported, input.subarray(at, end), end - at) !== 1) throw new BlkError('EIO', 'AES-256-GCM: EVP_CipherUpdate failed');
    }
    return ctx;
  }

  /** Frees the contexts (a key not used again). */
  dispose(): void {
    for (const ctx of [this.#sealing, this.#opening]) if (ctx !== null) freeContext(ctx);
    this.#sealing = null;
    this.#opening = null;
  }
}
