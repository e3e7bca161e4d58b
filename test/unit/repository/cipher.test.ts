// An encrypted repository's object cipher: nonces that never repeat, within one writer and across
// writers; objects that open only under the associated data they were sealed with; chunk ids and page
// names that are keyed (two repositories, or a guess without the key, cannot tell a content's id).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { aadOf, cipherOf, NONCE_BYTES, SALT_BYTES, SEAL_OVERHEAD } from '../../../src/repository/cipher.js';
import { sha256 } from '../../../src/repository/digest.js';

describe('object cipher (AES-256-GCM)', () => {
  it('never repeats a nonce: 20,000 objects from each of two writers of one repository, each opening the other\'s', () => {
    const secret = randomBytes(32);
    const writers = [cipherOf(secret), cipherOf(secret)];
    const seen = new Set<string>();
    const sealed: Array<{ by: number; object: Buffer; aad: Buffer; plain: Buffer }> = [];
    for (let i = 0; i < 20_000; i++) {
      for (const [by, w] of writers.entries()) {
        const plain = randomBytes(i % 7);
        const aad = aadOf('test', `${by}.${i}`);
        const object = w.seal(plain, aad);
        assert.equal(object.length, plain.length + SEAL_OVERHEAD);
        const nonce = object.toString('hex', 0, SALT_BYTES + NONCE_BYTES);
        assert.ok(!seen.has(nonce), `writer ${by}, object ${i}: its salt and nonce were used before`);
        seen.add(nonce);
        if (i % 1000 === 0) sealed.push({ by, object, aad, plain });
      }
    }
    assert.notEqual(writers[0]?.seal(Buffer.alloc(1), Buffer.alloc(0)).toString('hex', 0, SALT_BYTES), writers[1]?.seal(Buffer.alloc(1), Buffer.alloc(0)).toString('hex', 0, SALT_BYTES), 'two writers draw two salts');
    for (const { by, object, aad, plain } of sealed) assert.ok((writers[1 - by] as (typeof writers)[0]).open(object, aad, 'the object').equals(plain));
  });

  it('opens an object only as itself: another name, a flipped bit anywhere, another repository, a cut are EIO naming it', () => {
    const secret = randomBytes(32);
    const c = cipherOf(secret);
    const aad = aadOf('page', 'pages/ab/abcd');
    const object = c.seal(randomBytes(100), aad);
    assert.throws(() => c.open(object, aadOf('page', 'pages/ab/abce'), 'index page abcd'), /EIO: index page abcd fails authentication/);
    for (let bit = 0; bit < object.length * 8; bit += 7) {
      const bent = Buffer.from(object);
      bent[bit >> 3] = (bent[bit >> 3] as number) ^ (1 << (bit & 7));
      assert.throws(() => c.open(bent, aad, 'the page'), /EIO/, `bit ${bit}`);
    }
    assert.throws(() => cipherOf(randomBytes(32)).open(object, aad, 'the page'), /EIO/);
    assert.throws(() => c.open(object.subarray(0, SEAL_OVERHEAD - 1), aad, 'the page'), /EIO: the page is cut short/);
  });

  it('keys chunk ids and page names: not SHA-256, not the same in two repositories, the same in one', () => {
    const data = randomBytes(4096);
    const a = cipherOf(randomBytes(32));
    const b = cipherOf(randomBytes(32));
    assert.ok(!a.chunkId(data).equals(sha256(data)));
    assert.ok(!a.chunkId(data).equals(b.chunkId(data)));
    assert.ok(a.chunkId(data).equals(cipherOf(a.secret).chunkId(data)));
    assert.notEqual(a.pageName(data), sha256(data).toString('hex'));
    assert.notEqual(a.pageName(data), a.chunkId(data).toString('hex'), 'pages and chunks are named under keys of their own');
  });
});
