// The difference storage over a plain memory store: space given out chunk by chunk, growth in steps
// of diff_storage_minimum up to the limit, no_space at the end, a full filesystem lowering the limit.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { DiffStorage } from '../../../src/core/diff-storage.js';
import { BlkError } from '../../../src/errors.js';

const KiB = 1024;

describe('difference storage', () => {
  it('grows by diff_storage_minimum whenever free space falls to half of it, never past the limit', async () => {
    const store = new MemoryStorage(0);
    const diff = await DiffStorage.over(store, 'file', { limit: 40 * KiB, minimum: 16 * KiB });
    assert.equal(diff.capacity, 16 * KiB, 'the first step at open');
    const offsets: number[] = [];
    for (let i = 0; i < 10; i++) offsets.push(await diff.allocate(4 * KiB, 4 * KiB));
    assert.deepEqual(offsets, offsets.map((_, i) => i * 4 * KiB), 'a bump allocator from the front');
    await new Promise((r) => setImmediate(r));
    assert.equal(diff.capacity, 40 * KiB, '16 + 16 + 8: the last step stops at the limit');
    assert.equal(store.size, 40 * KiB, 'the store holds what was allocated');
  });

  it('at the limit: no_space with the requested sectors, then ENOSPC', async () => {
    const diff = await DiffStorage.over(new MemoryStorage(0), 'file', { limit: 8 * KiB, minimum: 8 * KiB });
    const events: number[] = [];
    diff.onNoSpace((e) => events.push(e.requestedSectors));
    await diff.allocate(8 * KiB, 4 * KiB);
    await assert.rejects(diff.allocate(4 * KiB, 4 * KiB), (e: BlkError) => e.code === 'ENOSPC');
    assert.deepEqual(events, [8]);
  });

  it('a filesystem that runs out of space lowers the limit to what is allocated', async () => {
    const store = new MemoryStorage(0);
    const diff = await DiffStorage.over(store, 'file', { limit: 1024 * KiB, minimum: 16 * KiB });
    store.grow = async () => {
      throw new BlkError('ENOSPC', 'no space left on device');
    };
    const events: number[] = [];
    diff.onNoSpace((e) => events.push(e.requestedSectors));
    for (let i = 0; i < 4; i++) await diff.allocate(4 * KiB, 4 * KiB);
    await assert.rejects(diff.allocate(4 * KiB, 4 * KiB), (e: BlkError) => e.code === 'ENOSPC');
    assert.equal(diff.limit, 16 * KiB);
    assert.ok(events.length >= 1, 'no_space told');
  });

  it('an old file store is emptied at open; reads and writes reach the store', async () => {
    const store = new MemoryStorage(8 * KiB);
    store.bytes.fill(9);
    const diff = await DiffStorage.over(store, 'file', { limit: 64 * KiB, minimum: 16 * KiB });
    assert.ok(store.bytes.subarray(0, 8 * KiB).every((b) => b === 0), 'old contents mean nothing now');
    const at = await diff.allocate(4 * KiB, 4 * KiB);
    await diff.write(at, Buffer.alloc(4 * KiB, 3));
    const back = Buffer.alloc(4 * KiB);
    await diff.read(at, back);
    assert.ok(back.every((b) => b === 3));
    assert.equal(diff.readNow(at, back), false, 'a plain store has no fast path');
    store.withFastPaths();
    assert.equal(diff.readNow(at, back), true);
  });
});
