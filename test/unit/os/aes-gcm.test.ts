// AES-256-GCM through libcrypto: the same bytes and tag as node:crypto for every length from 0 up
// (so either can open the other's), sealed into views at any offset, and a bent byte, tag, nonce or
// associated data never opens; in place as well as into another buffer.
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import { describe, it } from 'node:test';
import { AesGcm } from '../../../src/os/aes-gcm.js';

function nodeSeal(key: Buffer, nonce: Buffer, aad: Buffer, plain: Buffer): { sealed: Buffer; tag: Buffer } {
  const c = crypto.createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const sealed = Buffer.concat([c.update(plain), c.final()]);
  return { sealed, tag: c.getAuthTag() };
}

describe('AES-256-GCM (libcrypto)', () => {
  it('seals as node:crypto does, at lengths 0 to 70,000 and at odd offsets, and opens what node:crypto sealed', () => {
    const key = crypto.randomBytes(32);
    const gcm = new AesGcm(key);
    for (const length of [0, 1, 15, 16, 17, 4095, 65536, 65537, 70000]) {
      const nonce = crypto.randomBytes(12);
      const aad = crypto.randomBytes(length % 60);
      const plain = crypto.randomBytes(length);
      const area = Buffer.alloc(length + 16 + 3);
      const out = area.subarray(3, 3 + length);
      const tag = area.subarray(3 + length);
      gcm.seal(nonce, aad, plain, out, tag);
      const expected = nodeSeal(key, nonce, aad, plain);
      assert.ok(out.equals(expected.sealed), `ciphertext of ${length} bytes`);
      assert.ok(tag.equals(expected.tag), `tag of ${length} bytes`);
      const opened = Buffer.alloc(length);
      assert.equal(gcm.open(nonce, aad, expected.sealed, expected.tag, opened), true);
      assert.ok(opened.equals(plain));
    }
  });

  it('refuses a flipped bit in the ciphertext, the tag, the nonce or the associated data', () => {
    const gcm = new AesGcm(crypto.randomBytes(32));
    const nonce = crypto.randomBytes(12);
    const aad = Buffer.from('blksnap record');
    const plain = crypto.randomBytes(1000);
    const sealed = Buffer.alloc(1000);
    const tag = Buffer.alloc(16);
    gcm.seal(nonce, aad, plain, sealed, tag);
    const out = Buffer.alloc(1000);
    const bent = (b: Buffer, at: number): Buffer => {
      const c = Buffer.from(b);
      c[at] = (c[at] as number) ^ 1;
      return c;
    };
    assert.equal(gcm.open(nonce, aad, bent(sealed, 500), tag, out), false);
    assert.equal(gcm.open(nonce, aad, sealed, bent(tag, 15), out), false);
    assert.equal(gcm.open(bent(nonce, 0), aad, sealed, tag, out), false);
    assert.equal(gcm.open(nonce, bent(aad, 3), sealed, tag, out), false);
    assert.equal(gcm.open(nonce, aad, sealed, tag, out), true, 'and the sound one still opens after the failures');
    assert.ok(out.equals(plain));
    assert.equal(new AesGcm(crypto.randomBytes(32)).open(nonce, aad, sealed, tag, out), false, 'another key');
    assert.throws(() => new AesGcm(Buffer.alloc(16)), /EINVAL/);
  });

  it('seals and opens in place (output and input the same bytes), as a pack record is sealed', () => {
    const key = crypto.randomBytes(32);
    const gcm = new AesGcm(key);
    const nonce = crypto.randomBytes(12);
    const aad = Buffer.from('blksnap record');
    const plain = crypto.randomBytes(65536);
    const expected = nodeSeal(key, nonce, aad, plain);
    const body = Buffer.from(plain);
    const tag = Buffer.alloc(16);
    gcm.seal(nonce, aad, body, body, tag);
    assert.ok(body.equals(expected.sealed) && tag.equals(expected.tag));
    assert.equal(gcm.open(nonce, aad, body, tag, body), true);
    assert.ok(body.equals(plain));
  });
});
