// A restore from a bucket reads its chunks in pack order, neighbouring records in one ranged read:
// every chunk is in exactly one range, which holds its whole record; ranges keep to their limits.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { packRanges } from '../../../src/backup/pack-ranges.js';
import { ChunkIndex } from '../../../src/repository/chunk-index.js';
import { RECORD_HEADER } from '../../../src/repository/pack.js';

describe('pack ranges', () => {
  it('every chunk once, in a range of its pack holding its whole record; ranges in pack order and within their limits', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ pack: fc.integer({ min: 0, max: 3 }), stored: fc.integer({ min: 1, max: 5000 }), gapBefore: fc.integer({ min: 0, max: 3000 }) }), { minLength: 1, maxLength: 60 }),
        fc.integer({ min: 1000, max: 20000 }),
        fc.integer({ min: 0, max: 2000 }),
        (records, maximumBytes, gap) => {
          const index = new ChunkIndex();
          const digests = randomBytes(records.length * 32);
          const ends = [0, 0, 0, 0];
          const where = records.map((r, c) => {
            const offset = (ends[r.pack] as number) + r.gapBefore;
            ends[r.pack] = offset + RECORD_HEADER + r.stored;
            index.add(digests, c * 32, { pack: `p${r.pack}`, offset, storedLength: r.stored, flags: 0, size: 4096 });
            return { pack: `p${r.pack}`, offset, end: offset + RECORD_HEADER + r.stored };
          });
          const chunks = records.map((_, c) => c);
          const ranges = [...packRanges(index, digests, chunks, 4096, () => 4096, { maximumBytes, maximumDecoded: 8 * 4096, gap })];
          const seen = ranges.flatMap((r) => r.chunks).sort((a, b) => a - b);
          assert.deepEqual(seen, chunks);
          let last: [string, number] | null = null;
          for (const r of ranges) {
            const pack = index.packs[r.pack] as string;
            for (const c of r.chunks) {
              const w = where[c] as (typeof where)[number];
              assert.equal(w.pack, pack);
              assert.ok(w.offset >= r.offset && w.end <= r.offset + r.bytes, `chunk ${c}'s record within its range`);
            }
            if (r.chunks.length > 1) {
              assert.ok(r.bytes <= maximumBytes, `${r.bytes} bytes in a range of at most ${maximumBytes}`);
              assert.ok(r.chunks.length <= 8);
            }
            if (last && last[0] === pack) assert.ok(r.offset >= last[1], 'ranges of a pack in order');
            last = [pack, r.offset];
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('a chunk the repository lacks is EIO naming its offset', () => {
    const digests = randomBytes(64);
    assert.throws(() => [...packRanges(new ChunkIndex(), digests, [1], 65536, () => 65536, { maximumBytes: 1 << 20, maximumDecoded: 1 << 21, gap: 0 })], (e: NodeJS.ErrnoException) => e.code === 'EIO' && /offset 65536/.test(e.message));
  });
});
