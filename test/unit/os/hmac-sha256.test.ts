// HMAC-SHA-256 through libcrypto: RFC 4231's vectors, and node:crypto's result for keys and data of
// many lengths and offsets (chunk ids in encrypted repositories made before must not change).
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import { describe, it } from 'node:test';
import { hmacSha256 } from '../../../src/os/hmac-sha256.js';

describe('HMAC-SHA-256 (libcrypto)', () => {
  it("gives RFC 4231's test cases 1 and 2", () => {
    assert.equal(hmacSha256(Buffer.alloc(20, 0x0b), Buffer.from('Hi There')).toString('hex'), 'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7');
    assert.equal(hmacSha256(Buffer.from('Jefe'), Buffer.from('what do ya want for nothing?')).toString('hex'), '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843');
  });

  it('agrees with node:crypto for data of 0 to 70,000 bytes at odd offsets, and a key longer than a block', () => {
    const backing = crypto.randomBytes(70_003);
    for (const key of [crypto.randomBytes(32), crypto.randomBytes(100)]) {
      for (const length of [0, 1, 63, 64, 65, 4096, 65536, 70_000]) {
        const data = backing.subarray(3, 3 + length);
        assert.deepEqual(hmacSha256(key, data), crypto.createHmac('sha256', key).update(data).digest(), `${length} bytes`);
      }
    }
  });
});
