// A short seeded pass of every fuzz target in `npm test`; `npm run fuzz` runs the long one.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fuzz } from './run.js';
import { ALL_TARGETS } from './targets.js';

const COUNT = Number(process.env.BLKSNAP_FUZZ_COUNT ?? 2000);
const SEED = 20261127;

describe('fuzz (short, seeded)', () => {
  for (const make of ALL_TARGETS) {
    it(`${make().name}: ${COUNT} mutated inputs, nothing escapes, replies well formed, checks after each`, async (t) => {
      const r = await fuzz(make, COUNT, SEED, 1);
      t.diagnostic(`${r.inputs} inputs in ${r.seconds.toFixed(1)} s`);
      assert.deepEqual(r.failures, []);
      assert.equal(r.inputs, COUNT);
    });
  }
});
