import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CbtMap, cbtBlockGeometry } from '../../../src/cbt/cbt-map.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const PiB = 1024 * TiB;

describe('CBT block size rule (blksnap cbt_map_calculate_block_size)', () => {
  const cases: Array<[string, number, number, number]> = [
    ['1 MiB', MiB, 16, 16],
    ['100 GiB', 100 * GiB, 16, 1_638_400],
    ['200 GiB', 200 * GiB, 17, 1_638_400],
    ['4 TiB', 4 * TiB, 21, 2_097_152],
    ['1 PiB (capped at 2^26)', PiB, 26, 16_777_216],
    ['1 MiB + 1 byte (partial last block)', MiB + 1, 16, 17],
    ['0 bytes', 0, 16, 0],
  ];
  for (const [label, capacity, shift, count] of cases) {
    it(`${label}: block 2^${shift}, ${count} blocks`, () => {
      assert.deepEqual(cbtBlockGeometry(capacity), { blockShift: shift, blockCount: count });
      if (capacity <= 4 * TiB) {
        const map = new CbtMap(capacity);
        assert.equal(map.blockSize, 2 ** shift);
        assert.equal(map.blockCount, count);
      }
    });
  }

  it('never exceeds the maximum count below the maximum shift', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (capacity) => {
        const { blockShift, blockCount } = cbtBlockGeometry(capacity);
        assert.equal(blockCount, Math.ceil(capacity / 2 ** blockShift));
        assert.ok(blockShift >= 16 && blockShift <= 26);
        if (blockShift < 26) assert.ok(blockCount <= 2_097_152);
        if (blockShift > 16) assert.ok(Math.ceil(capacity / 2 ** (blockShift - 1)) > 2_097_152);
      }),
    );
  });
});

describe('CbtMap numbers and maps', () => {
  it('starts with zero maps, previous 0, active 1 and a generation UUID', () => {
    const map = new CbtMap(MiB);
    assert.equal(map.previousNumber, 0);
    assert.equal(map.activeNumber, 1);
    assert.match(map.generationId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.deepEqual([...map.readMap(0, map.blockCount)], new Array(16).fill(0));
  });

  it('marks exactly the blocks a write touches, including the last, partial block', () => {
    const map = new CbtMap(MiB + 100);
    map.mark(65535, 2); // straddles blocks 0 and 1
    map.mark(MiB + 99, 1); // the last byte, in partial block 16
    map.switch();
    const read = map.readMap(0, map.blockCount);
    assert.equal(read.length, 17);
    assert.deepEqual([...read].map((v, i) => (v ? i : -1)).filter((i) => i >= 0), [0, 1, 16]);
    assert.ok([...read].filter((v) => v).every((v) => v === 1));
  });

  it('refuses a range past the last block with EINVAL', () => {
    const map = new CbtMap(MiB);
    assert.throws(() => map.mark(MiB, 1), { code: 'EINVAL' });
  });

  it('switch publishes the active map and numbers a new epoch; blocks keep the highest number', () => {
    const map = new CbtMap(4 * 65536);
    map.mark(0, 1);
    map.switch(); // previous 1, active 2
    map.mark(65536, 1);
    map.mark(0, 1);
    map.switch(); // previous 2, active 3
    assert.equal(map.previousNumber, 2);
    assert.deepEqual([...map.readMap(0, 4)], [2, 2, 0, 0]);
    // A backup made at snapshot 1 copies blocks whose number is > 1.
    assert.deepEqual([...map.readMap(0, 4)].map((v) => v > 1), [true, true, false, false]);
  });

  it('markBoth marks the active map with active and the read map with previous', () => {
    const map = new CbtMap(4 * 65536);
    map.switch();
    map.switch(); // previous 2, active 3
    map.markBoth(3 * 65536, 10);
    assert.deepEqual([...map.readMap(0, 4)], [0, 0, 0, 2]);
    assert.deepEqual([...map.activeMapCopy()], [0, 0, 0, 3]);
  });

  it('wraps after 255 switches: active back to 1, active map zeroed, new generation', () => {
    const map = new CbtMap(4 * 65536);
    const firstGeneration = map.generationId;
    for (let i = 0; i < 254; i++) {
      map.mark((i % 4) * 65536, 1);
      map.switch();
    }
    assert.equal(map.activeNumber, 255);
    assert.equal(map.generationId, firstGeneration);
    map.mark(0, 1);
    map.switch(); // active would be 256
    assert.equal(map.previousNumber, 255);
    assert.equal(map.activeNumber, 1);
    assert.notEqual(map.generationId, firstGeneration);
    assert.deepEqual([...map.activeMapCopy()], [0, 0, 0, 0]);
    // The read map is only refreshed by the next switch (blksnap), and then it is all zero too.
    map.switch();
    assert.deepEqual([...map.readMap(0, 4)], [0, 0, 0, 0]);
    assert.equal(map.previousNumber, 1);
  });

  it('matches a model of the rules over random operation sequences', () => {
    const blocks = 8;
    const op = fc.oneof(
      fc.record({ kind: fc.constant('mark' as const), block: fc.integer({ min: 0, max: blocks - 1 }), n: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ kind: fc.constant('both' as const), block: fc.integer({ min: 0, max: blocks - 1 }), n: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ kind: fc.constant('switch' as const), times: fc.integer({ min: 1, max: 60 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const map = new CbtMap(blocks * 65536);
        const model = { active: new Array<number>(blocks).fill(0), read: new Array<number>(blocks).fill(0), prev: 0, act: 1, generations: 1 };
        let generation = map.generationId;
        for (const o of ops) {
          if (o.kind === 'switch') {
            for (let t = 0; t < o.times; t++) {
              map.switch();
              model.prev = model.act;
              model.act++;
              if (model.act === 256) {
                model.act = 1;
                model.active.fill(0);
                model.generations++;
              } else model.read = [...model.active];
            }
          } else {
            const last = Math.min(blocks - 1, o.block + o.n - 1);
            const length = (last - o.block + 1) * 65536;
            if (o.kind === 'mark') map.mark(o.block * 65536, length);
            else map.markBoth(o.block * 65536, length);
            for (let b = o.block; b <= last; b++) {
              model.active[b] = Math.max(model.active[b] as number, model.act);
              if (o.kind === 'both') model.read[b] = Math.max(model.read[b] as number, model.prev);
            }
          }
          if (map.generationId !== generation) {
            generation = map.generationId;
            model.generations--;
          }
        }
        assert.deepEqual([...map.activeMapCopy()], model.active);
        assert.deepEqual([...map.readMap(0, blocks)], model.read);
        assert.equal(map.previousNumber, model.prev);
        assert.equal(map.activeNumber, model.act);
        assert.equal(model.generations, 1);
      }),
      { numRuns: 200 },
    );
  });
});
