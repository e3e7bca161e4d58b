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

  // A hang guard, not a speed measure: joining and re-splitting the whole partial line at every
  // piece made this quadratic (an 8 MiB line in 16-byte pieces: terabytes of copying).
  it('takes a long line sent in many small pieces in linear work', { timeout: 60_000 }, () => {
    const framer = new LineFramer(16 << 20);
    const piece = 'x'.repeat(16);
    for (let i = 0; i < (8 << 20) / 16; i++) assert.equal(framer.push(piece).length, 0);
    const lines = framer.push('\nnext\n');
    assert.equal(lines.length, 2);
    assert.equal(lines[0]?.length, 8 << 20);
    assert.equal(lines[1], 'next');
  });

  it('rejects a line longer than the bound, even before its newline', () => {
    const framer = new LineFramer(10);
    assert.throws(() => framer.push('x'.repeat(11)), { code: 'EINVAL' });
  });
});
