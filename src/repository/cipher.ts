// Owns how a repository's objects are named and sealed: in a plain repository chunks and pages are
// named by their SHA-256 and stored as they are; in an encrypted one they are named by keyed hashes
// (HMAC-SHA-256: a name tells nothing of the content to whoever lacks the key) and every object is
// sealed with AES-256-GCM, its name (or a chunk's id) bound in as associated data, so an object moved
// or copied over another fails to open. Nonces are never reused by construction, not by chance: each
// sealing cipher (one per process or worker thread) draws a random 128-bit writer salt, seals under
// a key derived from the salt, and counts its nonces; the salt travels with every object.
import * as crypto from 'node:crypto';
import { BlkError } from '../errors.js';
import { AesGcm } from '../os/aes-gcm.js';
import { hmacSha256 } from '../os/hmac-sha256.js';
import { sha256 } from './digest.js';

/** A sealed object: writer salt (16) · nonce (12: 4 zero bytes, a 64-bit big-endian counter) · ciphertext · tag (16). */
export const SALT_BYTES = 16;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const SEAL_OVERHEAD = SALT_BYTES + NONCE_BYTES + TAG_BYTES;
/** Ciphers of salts read back that are kept (a pack's records come from a few writers). */
const OPEN_KEYS_KEPT = 64;
/** The master secret every key of a repository wraps. */
export const SECRET_BYTES = 32;

export interface ObjectCipher {
  /** Whether objects are sealed (an encrypted repository). */
  readonly isSealed: boolean;
  /** The secret a worker thread needs to make the same cipher (cipherOf); null for a plain repository. */
  readonly secret: Buffer | null;
  /** A chunk's id: SHA-256, or HMAC-SHA-256 under the id key. */
  chunkId(data: Uint8Array): Buffer;
  /** An index page's object name (hex): SHA-256 of its bytes, or HMAC-SHA-256 under the page key. */
  pageName(page: Uint8Array): string;
  /** `plain` sealed, bound to `aad`; a plain repository's cipher returns the bytes as they are. */
  seal(plain: Uint8Array, aad: Uint8Array): Buffer;
  /** Where, in a sealed object, its body starts (after salt and nonce); 0 in a plain repository. */
  readonly sealedBodyAt: number;
  /**
   * Seals in place the `plainLength` bytes at `sealedBodyAt` of `object` (which has room for the tag
   * after them), writing salt and nonce before them; the sealed object's length. A plain repository's
   * cipher leaves the bytes as they are.
   */
  sealInPlace(object: Uint8Array, plainLength: number, aad: Uint8Array): number;
  /** Opens what seal() made with the same `aad`; EIO naming `what` when it fails (damaged, or not this object). */
  open(sealed: Uint8Array, aad: Uint8Array, what: string): Buffer;
  /** As open(), into `out` (exactly SEAL_OVERHEAD bytes shorter than `sealed`, opened). */
  openInto(sealed: Uint8Array, aad: Uint8Array, out: Uint8Array, what: string): void;
}

class PlainCipher implements ObjectCipher {
  readonly isSealed = false;
  readonly secret = null;
  readonly sealedBodyAt = 0;

  chunkId(data: Uint8Array): Buffer {
    return sha256(data);
  }

  pageName(page: Uint8Array): string {
    return sha256(page).toString('hex');
  }

  seal(plain: Uint8Array): Buffer {
    return Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength);
  }

  sealInPlace(_object: Uint8Array, plainLength: number): number {
    return plainLength;
  }

  open(sealed: Uint8Array): Buffer {
    return Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  }

  openInto(sealed: Uint8Array, _aad: Uint8Array, out: Uint8Array, what: string): void {
    if (out.length !== sealed.length) throw new BlkError('EIO', `${what} holds ${sealed.length} bytes, ${out.length} expected`);
    out.set(sealed);
  }
}

function derive(secret: Buffer, purpose: string): Buffer {
  return Buffer.from(crypto.hkdfSync('sha256', secret, Buffer.alloc(0), `blksnap repository ${purpose}`, 32));
}

class AesGcmCipher implements ObjectCipher {
  readonly isSealed = true;
  readonly secret: Buffer;
  readonly sealedBodyAt = SALT_BYTES + NONCE_BYTES;
  #objectsKey: Buffer;
  #idKey: Buffer;
  #pageKey: Buffer;
  /** This writer's salt and the cipher of the key derived from it; the next nonce's counter. */
  #salt = crypto.randomBytes(SALT_BYTES);
  #writer: AesGcm;
  #counter = 0n;
  /** Ciphers of other writers' salts, by salt (hex). */
  #readers = new Map<string, AesGcm>();
  #nonce = Buffer.alloc(NONCE_BYTES);

  constructor(secret: Buffer) {
    if (secret.length !== SECRET_BYTES) throw new BlkError('EINVAL', `a repository secret is ${SECRET_BYTES} bytes, not ${secret.length}`);
    this.secret = secret;
    this.#objectsKey = derive(secret, 'objects');
    this.#idKey = derive(secret, 'chunk ids');
    this.#pageKey = derive(secret, 'page names');
    this.#writer = this.#cipherOfSalt(this.#salt);
  }

  #cipherOfSalt(salt: Uint8Array): AesGcm {
    return new AesGcm(Buffer.from(crypto.hkdfSync('sha256', this.#objectsKey, salt, 'blksnap repository writer', 32)));
  }

  chunkId(data: Uint8Array): Buffer {
    return hmacSha256(this.#idKey, data);
  }

  pageName(page: Uint8Array): string {
    return hmacSha256(this.#pageKey, page).toString('hex');
  }

  seal(plain: Uint8Array, aad: Uint8Array): Buffer {
    const out = Buffer.allocUnsafe(SEAL_OVERHEAD + plain.length);
    out.set(plain, this.sealedBodyAt);
    this.sealInPlace(out, plain.length, aad);
    return out;
  }

  sealInPlace(object: Uint8Array, plainLength: number, aad: Uint8Array): number {
    const length = SEAL_OVERHEAD + plainLength;
    if (object.length < length) throw new BlkError('EINVAL', `no room to seal ${plainLength} bytes in ${object.length}`);
    object.set(this.#salt, 0);
    const nonce = this.#nonce;
    nonce.writeBigUInt64BE(this.#counter++, 4);
    object.set(nonce, SALT_BYTES);
    const body = object.subarray(this.sealedBodyAt, this.sealedBodyAt + plainLength);
    this.#writer.seal(nonce, aad, body, body, object.subarray(this.sealedBodyAt + plainLength, length));
    return length;
  }

  open(sealed: Uint8Array, aad: Uint8Array, what: string): Buffer {
    const out = Buffer.allocUnsafe(Math.max(0, sealed.length - SEAL_OVERHEAD));
    this.openInto(sealed, aad, out, what);
    return out;
  }

  openInto(sealed: Uint8Array, aad: Uint8Array, out: Uint8Array, what: string): void {
    if (sealed.length < SEAL_OVERHEAD) throw new BlkError('EIO', `${what} is cut short (${sealed.length} bytes sealed)`);
    const length = sealed.length - SEAL_OVERHEAD;
    if (out.length !== length) throw new BlkError('EIO', `${what} holds ${length} bytes sealed, ${out.length} expected`);
    const body = SALT_BYTES + NONCE_BYTES;
    const isSound = this.#cipherOf(sealed.subarray(0, SALT_BYTES)).open(sealed.subarray(SALT_BYTES, body), aad, sealed.subarray(body, body + length), sealed.subarray(body + length), out);
    if (!isSound) throw new BlkError('EIO', `${what} fails authentication: damaged, or not the object its name says`);
  }

  #cipherOf(salt: Uint8Array): AesGcm {
    if (Buffer.compare(salt, this.#salt) === 0) return this.#writer;
    const name = Buffer.from(salt.buffer, salt.byteOffset, salt.byteLength).toString('hex');
    let cipher = this.#readers.get(name);
    if (!cipher) {
      if (this.#readers.size >= OPEN_KEYS_KEPT) {
        for (const c of this.#readers.values()) c.dispose();
        this.#readers.clear();
      }
      cipher = this.#cipherOfSalt(salt);
      this.#readers.set(name, cipher);
    }
    return cipher;
  }
}

/** A repository's cipher from its secret: plain without one. */
export function cipherOf(secret: Uint8Array | null): ObjectCipher {
  return secret === null ? PLAIN : new AesGcmCipher(Buffer.from(secret));
}

export const PLAIN: ObjectCipher = new PlainCipher();

/** Associated data naming an object: its kind and its name, so a sealed object opens only as itself. */
export function aadOf(kind: string, name: string): Buffer {
  return Buffer.from(`blksnap ${kind} ${name}`, 'utf8');
}
