// The I/O buffer pool: what it hands out again, and what it must never take back.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { bytesToAlignment, DIRECT_ALIGNMENT } from '../../../src/os/koffi.js';
import { BufferPool } from '../../../src/util/buffer-pool.js';

const KiB = 1024;

describe('buffer pool', () => {
  it('hands a released buffer out again for the same size class', () => {
    const pool = new BufferPool(16 * 1024 * KiB);
    const a = pool.acquire(700 * KiB);
    pool.release(a);
    const b = pool.acquire(1024 * KiB);
    assert.equal(b.buffer, a.buffer);
    assert.equal(b.length, 1024 * KiB);
  });

  it('puts the byte asked for on an aligned address (a read reply\'s data after its header), new or reused', () => {
    const pool = new BufferPool(16 * 1024 * KiB);
    for (const alignedAt of [0, 16, 32, 4095, 4096, 5000]) {
      for (let round = 0; round < 3; round++) {
        const b = pool.acquire(256 * KiB + alignedAt, alignedAt);
        assert.equal(b.length, 256 * KiB + alignedAt);
        assert.equal(bytesToAlignment(b.subarray(alignedAt), DIRECT_ALIGNMENT), 0, `byte ${alignedAt}, round ${round}`);
        b.fill(round); // the whole view is the pool's to write
        pool.release(b);
      }
    }
  });

  it('takes a buffer back once: a second release, or a release of another view of it, does not hand it out twice', () => {
    const pool = new BufferPool(16 * 1024 * KiB);
    const a = pool.acquire(128 * KiB, 32);
    pool.release(a.subarray(64 * KiB));
    pool.release(a);
    pool.release(a);
    const b = pool.acquire(128 * KiB);
    const c = pool.acquire(128 * KiB);
    assert.equal(b.buffer, a.buffer);
    assert.notEqual(c.buffer, a.buffer, 'handed out twice');
  });

  it('never takes back a view of memory it did not allocate (a receive arena)', () => {
    const pool = new BufferPool(16 * 1024 * KiB);
    const arena = Buffer.allocUnsafeSlow(4096 * KiB);
    const view = arena.subarray(0, 128 * KiB);
    assert.equal(pool.isPooled(view), false);
    pool.release(view);
    assert.notEqual(pool.acquire(4096 * KiB).buffer, arena.buffer);
  });

  it('cuts small buffers from a shared slab without overlap', () => {
    const pool = new BufferPool(16 * 1024 * KiB);
    const pieces = Array.from({ length: 600 }, (_, i) => pool.acquire(4096 + 16 + (i % 7)));
    for (const [i, p] of pieces.entries()) p.fill(i & 0xff);
    for (const [i, p] of pieces.entries()) assert.ok(p.every((x) => x === (i & 0xff)), `piece ${i} was overwritten`);
    assert.equal(pool.isPooled(pieces[0] as Buffer), false);
  });
});
