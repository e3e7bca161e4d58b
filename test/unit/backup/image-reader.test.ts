// The order a backup reads its runs in: runs cut from chunk lists, and the runs spread over read fronts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { inFronts, runsOf, type ChunkRun } from '../../../src/backup/image-reader.js';

const key = (r: ChunkRun): string => `${r.first}+${r.count}`;

describe('image reader: read order', () => {
  it('cuts ascending chunks into runs of consecutive chunks, none longer than asked', () => {
    assert.deepEqual(runsOf([0, 1, 2, 3, 7, 8, 20], 3), [{ first: 0, count: 3 }, { first: 3, count: 1 }, { first: 7, count: 2 }, { first: 20, count: 1 }]);
  });

  it('reads the first run of each front before any second one, each front in device order', () => {
    const runs = runsOf(Array.from({ length: 16 }, (_, i) => i), 1);
    const order = inFronts(runs, 4).map((r) => r.first);
    assert.deepEqual(order, [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]);
  });

  it('keeps every run once; fronts start at even shares of the chunks and go round in turn', () => {
    fc.assert(fc.property(
      fc.uniqueArray(fc.integer({ min: 0, max: 5000 }), { maxLength: 400 }),
      fc.integer({ min: 1, max: 6 }),
      fc.integer({ min: 1, max: 16 }),
      (chunks, fronts, maximum) => {
        const runs = runsOf(chunks.sort((a, b) => a - b), maximum);
        const ordered = inFronts(runs, fronts);
        assert.deepEqual(ordered.map(key).sort(), runs.map(key).sort());
        if (runs.length === 0) return;
        // The first n runs start the fronts, in device order; every run belongs to the front it follows.
        const n = Math.min(fronts, runs.length);
        const starts = ordered.slice(0, n).map((r) => runs.indexOf(r));
        assert.deepEqual(starts, [...starts].sort((a, b) => a - b));
        assert.equal(starts[0], 0);
        const frontOf = (i: number): number => starts.filter((s) => s <= i).length - 1;
        // Fronts take turns: each run is its front's k-th, and k never falls along the order; within
        // one k the fronts go in device order. So each front reads its share front to back.
        let last = { k: 0, front: -1 };
        for (const r of ordered) {
          const i = runs.indexOf(r);
          const f = frontOf(i);
          const k = i - (starts[f] as number);
          assert.ok(k > last.k || (k === last.k && f > last.front), `run ${key(r)} (front ${f}, turn ${k}) after front ${last.front}, turn ${last.k}`);
          last = { k, front: f };
        }
        // Each front's share holds about 1/n of the chunks.
        const total = runs.reduce((a, r) => a + r.count, 0);
        const bounds = [...starts, runs.length];
        for (let f = 0; f < n; f++) {
          const share = runs.slice(bounds[f], bounds[f + 1]).reduce((a, r) => a + r.count, 0);
          assert.ok(Math.abs(share - total / n) <= maximum + 1, `front ${f} has ${share} of ${total} chunks`);
        }
      },
    ), { numRuns: 300 });
  });
});
