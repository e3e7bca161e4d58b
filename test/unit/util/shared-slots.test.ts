// Slots of memory shared by threads (a backup's parts, a restore's fetched ranges): each slot is
// held by one claimer at a time whichever threads claim and free them, and its bytes are the same
// memory in every thread.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { SharedSlots } from '../../../src/util/shared-slots.js';

describe('shared slots', () => {
  it('claims every slot once, none when all are taken, a freed one again; refs name slots and only them', () => {
    const slots = SharedSlots.create(3, 4096);
    const taken = [slots.claim(), slots.claim(), slots.claim()];
    assert.deepEqual([...taken].sort(), [0, 1, 2]);
    assert.equal(slots.claim(), null);
    slots.release(1);
    assert.equal(slots.claim(), 1);
    const view = slots.view(2, 100);
    view.fill(7);
    assert.deepEqual(slots.refOf(view), { slot: 2, length: 100 });
    assert.deepEqual(slots.resolve({ slot: 2, length: 100 }), Buffer.alloc(100, 7));
    const own = Buffer.alloc(100);
    assert.equal(slots.refOf(own), null);
    assert.equal(slots.resolve(slots.ref(own)), own);
    // Inside a slot but not at its start: not a slot's bytes as a whole.
    assert.equal(slots.refOf(slots.view(2).subarray(8)), null);
    assert.throws(() => slots.view(3), RangeError);
    assert.throws(() => slots.view(0, 4097), RangeError);
  });

  it('threads claiming and freeing at once never hold one slot together, and see each other’s bytes', async () => {
    const slots = SharedSlots.create(4, 64);
    const rounds = 20_000;
    // Each thread claims a slot, checks that nobody else writes it while held (its own mark stays), frees it.
    const source = `
      const { workerData, parentPort } = require('node:worker_threads');
      import(workerData.module).then(({ SharedSlots }) => {
        const slots = new SharedSlots(workerData.slots);
        let clashes = 0, held = 0;
        for (let r = 0; r < workerData.rounds; r++) {
          const slot = slots.claim();
          if (slot === null) continue;
          held++;
          const mark = new Int32Array(slots.handle.memory, slot * slots.handle.slotBytes, 1);
          Atomics.store(mark, 0, workerData.mark);
          for (let spin = 0; spin < 20; spin++) if (Atomics.load(mark, 0) !== workerData.mark) clashes++;
          slots.release(slot);
        }
        parentPort.postMessage({ clashes, held });
      });`;
    const module = new URL('../../../src/util/shared-slots.js', import.meta.url).href;
    const run = (mark: number): Promise<{ clashes: number; held: number }> =>
      new Promise((resolve, reject) => {
        const w = new Worker(source, { eval: true, workerData: { slots: slots.handle, rounds, mark, module } });
        w.once('message', resolve);
        w.once('error', reject);
      });
    const results = await Promise.all([run(1), run(2), run(3), run(4), run(5), run(6)]);
    for (const r of results) assert.equal(r.clashes, 0);
    assert.ok(results.reduce((a, r) => a + r.held, 0) > rounds, 'the threads held slots many times');
    // All freed, and what a thread wrote is in this thread's view of the memory.
    assert.deepEqual([slots.claim(), slots.claim(), slots.claim(), slots.claim()].sort(), [0, 1, 2, 3]);
    const seen = slots.view(0).readInt32LE(0);
    assert.ok(seen >= 1 && seen <= 6, `slot 0 holds a thread's mark (${seen})`);
  });
});
