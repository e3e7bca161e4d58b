// A pack built in memory and handed on in parts: whatever mix of appends made it, the parts joined
// are its bytes, each but the last exactly a part, none empty, each with its MD5; every buffer it
// takes holds a part.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type FilledPart, PartStream, partBufferBytes } from '../../../src/repository/part-stream.js';

const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('base64');

describe('PartStream', () => {
  it('the parts joined are the bytes appended, in place or copied; each but the last a whole part, none empty', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }).map((k) => k * 4096),
        fc.array(fc.record({ inPlace: fc.boolean(), length: fc.integer({ min: 0, max: 3 * 4096 * 8 }), slack: fc.integer({ min: 0, max: 300 }) }), { maxLength: 40 }),
        (partBytes, appends) => {
          const parts: FilledPart[] = [];
          let taken = 0;
          const stream = new PartStream(partBytes, (p) => parts.push({ ...p, data: new Uint8Array(p.data) }), () => {
            taken++;
            return Buffer.allocUnsafeSlow(partBufferBytes(partBytes));
          });
          const expected: Buffer[] = [];
          for (const a of appends) {
            const data = randomBytes(a.length);
            expected.push(data);
            if (a.inPlace) {
              stream.appendInPlace(a.length + a.slack, (into) => {
                assert.ok(into.length >= a.length + a.slack);
                data.copy(into);
                return a.length;
              });
            } else stream.append(data);
          }
          stream.finish();
          const whole = Buffer.concat(expected);
          assert.equal(stream.size, whole.length);
          assert.deepEqual(Buffer.concat(parts.map((p) => p.data)), whole);
          parts.forEach((p, i) => {
            assert.equal(p.n, i + 1);
            assert.equal(p.last, i === parts.length - 1);
            assert.equal(p.md5, md5(p.data));
            if (!p.last) assert.equal(p.data.length, partBytes);
            else assert.ok(p.data.length > 0 || parts.length === 1, 'an empty last part after others');
          });
          // Every buffer taken holds a part: none is taken after the last (a slot of shared memory would stay taken).
          assert.equal(taken, parts.length);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a record larger than the slack is copied in whole; buffers come from the supplier given', () => {
    const partBytes = 2 * 1024 * 1024;
    let made = 0;
    const parts: FilledPart[] = [];
    const stream = new PartStream(partBytes, (p) => parts.push(p), () => {
      made++;
      return Buffer.allocUnsafeSlow(partBufferBytes(partBytes));
    });
    const big = randomBytes(3 * 1024 * 1024);
    stream.appendInPlace(big.length, (into) => big.copy(into));
    stream.finish();
    assert.deepEqual(Buffer.concat(parts.map((p) => p.data)), big);
    assert.deepEqual(parts.map((p) => [p.n, p.data.length, p.last]), [[1, partBytes, false], [2, big.length - partBytes, true]]);
    assert.equal(made, 2, 'the first buffer, and one after each part but the last');
    for (const p of parts) assert.equal(p.data.buffer.byteLength, partBufferBytes(partBytes), 'each part in a buffer of its own');
  });
});
