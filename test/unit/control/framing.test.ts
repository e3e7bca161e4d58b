import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { LineFramer } from '../../../src/control/framing.js';

describe('LineFramer', () => {
  it('returns whole lines however the stream is split', () => {
    fc.assert(
      fc.property(fc.array(fc.string({ unit: 'grapheme-ascii' }).map((s) => s.replace(/\n/g, '')).filter((s) => s.trim() !== ''), { maxLength: 20 }), fc.array(fc.nat(), { maxLength: 10 }), (lines, cuts) => {
        const text = lines.map((l) => `${l}\n`).join('');
        const framer = new LineFramer(1 << 20);
        const out: string[] = [];
        let last = 0;
        for (const c of [...cuts.map((c) => c % (text.length + 1))].sort((a, b) => a - b)) {
          out.push(...framer.push(text.slice(last, c)));
          last = c;
        }
        out.push(...framer.push(text.slice(last)));
        assert.deepEqual(out, lines);
      }),
    );
  });

  it('rejects a line longer than the bound, even before its newline', () => {
    const framer = new LineFramer(10);
    assert.throws(() => framer.push('x'.repeat(11)), { code: 'EINVAL' });
  });
});
