// The difference storage over a plain memory store: space given out chunk by chunk, growth in steps
// of diff_storage_minimum up to the limit, no_space at the end, a full filesystem lowering the limit.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { FileStorage } from '../../../src/backing/file-storage.js';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { DiffStorage } from '../../../src/core/diff-storage.js';
import { BlkError } from '../../../src/errors.js';
import { isRangeCached, readCached } from '../../../src/os/libc.js';
import { tempDir } from '../../helpers/tools.js';

const KiB = 1024;
const CHUNK = 256 * KiB;

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

  it('low_space once, when the storage fills past its warning share of the limit, before no_space', async () => {
    const diff = await DiffStorage.over(new MemoryStorage(0), 'file', { limit: 40 * KiB, minimum: 40 * KiB, lowSpaceShare: 0.75 });
    const events: string[] = [];
    diff.onLowSpace((e) => events.push(`low_space ${e.usedSectors}/${e.limitSectors}`));
    diff.onNoSpace((e) => events.push(`no_space ${e.requestedSectors}`));
    for (let i = 0; i < 7; i++) await diff.allocate(4 * KiB, 4 * KiB);
    assert.deepEqual(events, [], '28 of 40 KiB: under 75 %');
    assert.equal(diff.isLowOnSpace, false);
    await diff.allocate(4 * KiB, 4 * KiB);
    assert.deepEqual(events, ['low_space 64/80'], '32 of 40 KiB');
    assert.equal(diff.isLowOnSpace, true);
    await diff.allocate(8 * KiB, 4 * KiB);
    await assert.rejects(diff.allocate(4 * KiB, 4 * KiB), (e: BlkError) => e.code === 'ENOSPC');
    assert.deepEqual(events, ['low_space 64/80', 'no_space 8'], 'once each, low_space first');
  });

  it('a released slot (a discarded chunk) is taken again only once its hole is punched; used and peak follow', async () => {
    const store = new MemoryStorage(0);
    const diff = await DiffStorage.over(store, 'file', { limit: 64 * KiB, minimum: 64 * KiB });
    const a = await diff.allocate(4 * KiB, 4 * KiB);
    const b = await diff.allocate(4 * KiB, 4 * KiB);
    assert.deepEqual([diff.used, diff.peak], [8 * KiB, 8 * KiB]);
    let punch = (): void => undefined;
    const trims: Array<[number, number]> = [];
    store.trim = (offset: number, length: number) => {
      trims.push([offset, length]);
      return new Promise<void>((r) => (punch = r));
    };
    const released = diff.release(a, 4 * KiB);
    // While the hole is still being punched, a copy must get other space: the punch would wipe it.
    const c = await diff.allocate(4 * KiB, 4 * KiB);
    assert.notEqual(c, a);
    punch();
    await released;
    assert.deepEqual(trims, [[a, 4 * KiB]]);
    assert.equal(await diff.allocate(4 * KiB, 4 * KiB), a, 'then the slot is taken again before new space');
    assert.deepEqual([diff.used, diff.peak], [12 * KiB, 12 * KiB]);
    assert.ok(b !== a && b !== c);
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

  it('copies by O_DIRECT cache no page, nor do reads of kept chunks not in the page cache; reads from other threads bring in no page of the slot after theirs (no read-ahead)', async () => {
    const tmp = tempDir();
    const origin = new MemoryStorage(4 * CHUNK);
    for (let i = 0; i < origin.bytes.length; i++) origin.bytes[i] = (i * 13 + 5) & 0xff;
    const diff = await DiffStorage.open(tmp.dir, { limit: 64 * CHUNK, minimum: 64 * CHUNK, devices: [], isCopyDirect: true });
    try {
      assert.equal(diff.isCopyDirect, true, 'this filesystem takes O_DIRECT');
      const fd = diff.pageCacheDescriptor();
      const cachedPages = (from: number, to: number): number => {
        let n = 0;
        for (let p = from; p < to; p += 4 * KiB) if (isRangeCached(fd, p, 4 * KiB)) n++;
        return n;
      };
      const a = await diff.allocate(CHUNK, CHUNK);
      await diff.keep(origin, 0, CHUNK, a);
      assert.equal(cachedPages(0, 64 * CHUNK), 0, 'the copy went past the page cache');
      // Image reads of the kept chunk, front to back, at odd offsets: read past the page cache.
      const piece = Buffer.alloc(16 * KiB + 100);
      for (let at = 50; at + piece.length <= CHUNK; at += piece.length) {
        await diff.read(a + at, piece);
        assert.deepEqual(piece, Buffer.from(origin.bytes.subarray(at, at + piece.length)));
      }
      assert.equal(cachedPages(0, 64 * CHUNK), 0, 'uncached kept chunks are read past the page cache');
      // The try at once (every image read makes it first) fails on them, and starts no read into
      // the page cache that the direct read would then do again.
      assert.equal(diff.readNow(a, Buffer.alloc(16 * KiB)), false);
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(cachedPages(0, 64 * CHUNK), 0, 'a failed try at once brought pages in');
      // A FUSE reader thread tries the page cache (preadv2 RWF_NOWAIT) front to back: the pattern
      // the kernel reads ahead for, and a miss starts that read.
      for (let at = 0; at < CHUNK; at += 16 * KiB) readCached(fd, Buffer.alloc(16 * KiB), a + at);
      for (let i = 0; i < 100 && cachedPages(a, a + CHUNK) === 0; i++) await new Promise((r) => setTimeout(r, 5));
      assert.ok(cachedPages(a, a + CHUNK) >= 1, 'those reads bring pages of their slot in (the check sees cached pages)');
      const b = await diff.allocate(CHUNK, CHUNK);
      assert.equal(cachedPages(b, b + CHUNK), 0, 'no page of the next slot was read ahead');
      await diff.keep(origin, CHUNK, CHUNK, b);
      const kept = Buffer.alloc(CHUNK);
      await diff.read(b, kept);
      assert.deepEqual(kept, Buffer.from(origin.bytes.subarray(CHUNK, 2 * CHUNK)), 'the second copy reads back as written');
      // An image write of any alignment goes through the page cache onto the kept copy.
      await diff.write(a + 1000, Buffer.alloc(3000, 0xee));
      const back = Buffer.alloc(CHUNK);
      await diff.read(a, back);
      const want = Buffer.from(origin.bytes.subarray(0, CHUNK));
      want.fill(0xee, 1000, 4000);
      assert.deepEqual(back, want);
    } finally {
      await diff.close();
      tmp.remove();
    }
  });
  it('copies from a file go by splice (its page-cache pages into a direct write): the slot holds the original, which the write after the copy cannot reach; a splice that fails is done through memory, and not tried again', async () => {
    const tmp = tempDir();
    const file = path.join(tmp.dir, 'origin');
    const CHUNKS = 32;
    const original = Buffer.alloc(CHUNKS * CHUNK);
    for (let i = 0; i < original.length; i++) original[i] = (i * 7 + 3) & 0xff;
    fs.writeFileSync(file, original);
    const origin = await FileStorage.open(file);
    const writer = fs.openSync(file, 'r+');
    const diff = await DiffStorage.open(tmp.dir, { limit: 64 * CHUNK, minimum: 64 * CHUNK, devices: [], isCopyDirect: true });
    const spliceCached = origin.spliceCached.bind(origin);
    let splices = 0;
    let failSplices = false;
    origin.spliceCached = (offset, length, pipe) => {
      splices++;
      return failSplices ? Promise.reject(new BlkError('EINVAL', 'splice refused')) : spliceCached(offset, length, pipe);
    };
    const keepThenOverwrite = async (chunk: number, count: number): Promise<number> => {
      const at = await diff.allocate(count * CHUNK, CHUNK);
      await diff.keep(origin, chunk * CHUNK, count * CHUNK, at);
      // What a device write does once its chunks are kept, at once (a page-cache copy on the event
      // loop): it lands on the very pages spliced.
      fs.writeSync(writer, Buffer.alloc(count * CHUNK, 0x5a), 0, count * CHUNK, chunk * CHUNK);
      return at;
    };
    const isKept = async (at: number, chunk: number, count: number): Promise<boolean> => {
      const back = Buffer.alloc(count * CHUNK);
      await diff.read(at, back);
      return back.equals(original.subarray(chunk * CHUNK, (chunk + count) * CHUNK));
    };
    try {
      assert.equal(diff.isCopyDirect, true, 'this filesystem takes O_DIRECT');
      // Runs of two chunks, then one at a time: each copy then the write it let through.
      const slots: Array<{ at: number; chunk: number; count: number }> = [];
      for (let chunk = 0; chunk < CHUNKS - 2; ) {
        const count = chunk < 8 ? 2 : 1;
        slots.push({ at: await keepThenOverwrite(chunk, count), chunk, count });
        chunk += count;
      }
      assert.equal(splices, slots.length, 'one splice a copy');
      const overwritten = [];
      for (const s of slots) if (!(await isKept(s.at, s.chunk, s.count))) overwritten.push(s.chunk);
      assert.deepEqual(overwritten, [], 'slots holding the write instead of the original');
      failSplices = true;
      const b = await keepThenOverwrite(CHUNKS - 2, 1);
      assert.equal(splices, slots.length + 1);
      assert.ok(await isKept(b, CHUNKS - 2, 1), 'kept through memory after the splice failed');
      const c = await keepThenOverwrite(CHUNKS - 1, 1);
      assert.equal(splices, slots.length + 1, 'a refused splice is not tried again');
      assert.ok(await isKept(c, CHUNKS - 1, 1));
    } finally {
      await diff.close();
      await origin.close();
      fs.closeSync(writer);
      tmp.remove();
    }
  });
});
