// Aligned memory for O_DIRECT, handed out again: aligned starts, reuse of a large enough buffer, a bound on what is kept.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AlignedBufferPool } from '../../../src/os/aligned-pool.js';
import { bytesToAlignment, DIRECT_ALIGNMENT } from '../../../src/os/koffi.js';

const KiB = 1024;

describe('aligned buffer pool', () => {
  it('hands out aligned buffers of the size asked, reusing a free one at least as large', () => {
    const pool = new AlignedBufferPool(4096 * KiB);
    const a = pool.acquire(1000 * KiB);
    assert.equal(a.length, 1000 * KiB);
    assert.equal(bytesToAlignment(a, DIRECT_ALIGNMENT), 0);
    pool.release(a);
    const small = pool.acquire(10 * KiB);
    assert.equal(small.buffer, a.buffer, 'the free buffer serves a smaller request');
    assert.equal(small.length, 10 * KiB);
    assert.equal(bytesToAlignment(small, DIRECT_ALIGNMENT), 0);
    pool.release(small);
    const large = pool.acquire(1000 * KiB);
    assert.equal(large.buffer, a.buffer, 'all of it again after a smaller use');
    const larger = pool.acquire(2000 * KiB);
    assert.notEqual(larger.buffer, a.buffer, 'a buffer too small is not used');
  });

  it('keeps no more than its bound', () => {
    const pool = new AlignedBufferPool(1024 * KiB);
    const buffers = Array.from({ length: 3 }, () => pool.acquire(512 * KiB));
    for (const b of buffers) pool.release(b);
    const again = Array.from({ length: 3 }, () => pool.acquire(512 * KiB));
    const reused = again.filter((b) => buffers.some((x) => x.buffer === b.buffer)).length;
    assert.ok(reused <= 1, `${reused} reused: more was kept than the 1 MiB bound`);
  });
});
