// A snapshot's event queue: bounded, but the one corrupted event is never the one dropped.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EventQueue } from '../../../src/core/event-queue.js';

describe('EventQueue', () => {
  it('past its bound drops the oldest other event, never corrupted', async () => {
    const queue = new EventQueue(8);
    queue.push({ code: 'no_space', time: 1, data: { requestedSectors: 128 } });
    queue.push({ code: 'corrupted', time: 2, data: { device: 'd', errorCode: -28 } });
    for (let i = 0; i < 100; i++) queue.push({ code: 'no_space', time: 3 + i, data: { requestedSectors: 128 } });
    const seen = [];
    for (let e = await queue.wait(0); e !== null; e = await queue.wait(0)) seen.push(e);
    assert.equal(seen.length, 8);
    assert.equal(seen[0]?.code, 'corrupted');
    assert.deepEqual(seen.slice(1).map((e) => e.time), [96, 97, 98, 99, 100, 101, 102]);
  });
});
