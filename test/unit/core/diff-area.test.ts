// Copy-on-write races, deliberately: concurrent device writes, image reads, writes and discards over slow stores.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { FileStorage } from '../../../src/backing/file-storage.js';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { IoFlag } from '../../../src/core/block-device.js';
import { Device } from '../../../src/core/device.js';
import { DiffArea } from '../../../src/core/diff-area.js';
import { DiffStorage } from '../../../src/core/diff-storage.js';
import { PartsSource } from '../../helpers/parts.js';
import { BlkError } from '../../../src/errors.js';
import { readFromCache } from '../../../src/frontends/fuse/cached-read.js';
import { isRangeCached } from '../../../src/os/libc.js';
import { check, tempDir } from '../../helpers/tools.js';

const CHUNK = 4096;
const SIZE = 16 * CHUNK + 1000; // a partial last chunk

/** A memory store whose every operation finishes after a random number of event-loop turns. */
class JitteryStorage extends MemoryStorage {
  readonly jitter: () => number;
  constructor(size: number, jitter: () => number) {
    super(size);
    this.jitter = jitter;
    // As a page cache: the bytes as they are now, or (at random) "not in memory".
    this.withFastPaths({
      readNow: (offset, into) => {
        if (this.jitter() % 2 === 1) return false;
        into.set(this.bytes.subarray(offset, offset + into.length));
        return true;
      },
    });
  }
  async #delay(): Promise<void> {
    for (let i = this.jitter(); i > 0; i--) await new Promise((r) => setImmediate(r));
  }
  override async read(offset: number, into: Uint8Array): Promise<void> {
    await this.#delay();
    return super.read(offset, into);
  }
  override async write(offset: number, data: Uint8Array): Promise<void> {
    await this.#delay();
    return super.write(offset, data);
  }
}

/** A difference storage over a memory store, with a byte limit. */
function memoryDiff(store: MemoryStorage, limit: number): DiffStorage {
  let filled = 0;
  // Released slots (discarded chunks) are taken again first, as DiffStorage does; their bytes are
  // spoiled at release, so a read of one a chunk no longer owns shows.
  const free: number[] = [];
  return {
    release: async (offset: number, length: number) => {
      // The hole punched in the thread pool, some turns later; the slot free only after.
      await new Promise((r) => setImmediate(r));
      store.bytes.fill(0xee, offset, offset + length);
      free.push(offset);
    },
    allocate: async (length: number, alignment: number) => {
      if (length === CHUNK && free.length > 0) return free.pop();
      const at = Math.ceil(filled / alignment) * alignment;
      if (at + length > limit) throw new BlkError('ENOSPC', 'full');
      filled = at + length;
      return at;
    },
    read: (o: number, b: Uint8Array) => store.read(o, b),
    readNow: (o: number, b: Uint8Array) => store.fast?.readNow(o, b) ?? false,
    pageCacheDescriptor: () => -1,
    // As DiffStorage.keep: copy_file_range at once (the origin's bytes now), or in the thread pool
    // (the origin's bytes when the copy runs), or a read and a write through memory: whichever the
    // store's coin says.
    keep: async (origin: MemoryStorage, offset: number, length: number, at: number) => {
      if (store.fast?.readNow(0, new Uint8Array(0))) {
        store.bytes.set(origin.bytes.subarray(offset, offset + length), at);
        return;
      }
      await new Promise((r) => setImmediate(r));
      if (store.fast?.readNow(0, new Uint8Array(0))) {
        store.bytes.set(origin.bytes.subarray(offset, offset + length), at);
        return;
      }
      const buffer = new Uint8Array(length);
      await origin.read(offset, buffer);
      await store.write(at, buffer);
    },
    write: (o: number, b: Uint8Array) => store.write(o, b),
    close: async () => {},
  } as unknown as DiffStorage;
}

function health() {
  return {
    error: null as BlkError | null,
    events: 0,
    failures: 0,
    corrupt(_device: string, e: BlkError) {
      this.failures++;
      if (this.error) return; // as Snapshot.corrupt: the first error wins, one event
      this.error = e;
      this.events++;
    },
  };
}

const op = fc.oneof(
  fc.record({ kind: fc.constant('deviceStream' as const), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 3 * CHUNK }), byte: fc.integer({ min: 1, max: 255 }), parts: fc.integer({ min: 1, max: 5 }) }),
  fc.record({ kind: fc.constant('deviceWrite' as const), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 3 * CHUNK }), byte: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('imageRead' as const), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 3 * CHUNK }) }),
  fc.record({ kind: fc.constant('imageWrite' as const), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 3 * CHUNK }), byte: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('imageDiscard' as const), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 4 * CHUNK }) }),
);

/** Writes `data` as parts arriving over time (as a large NBD payload), `parts` pieces a few event-loop turns apart. */
async function streamInParts(device: Device, offset: number, data: Uint8Array, parts: number, jitter: () => number): Promise<void> {
  const source = new PartsSource(data.length);
  const written = device.write(offset, source, IoFlag.None);
  const step = Math.ceil(data.length / parts);
  for (let at = 0; at < data.length; at += step) {
    for (let i = jitter(); i > 0; i--) await new Promise((r) => setImmediate(r));
    source.push(data.subarray(at, Math.min(data.length, at + step)));
  }
  source.end();
  await written;
}

/**
 * Random device writes (whole and streamed), image reads and image writes, at once and racing:
 * the device ends as its writes say, the image as the take plus its own writes, and every image
 * read sees exactly that. `makeDiff` gives the difference storage of each run.
 */
function imagesUnderRaces(makeDiff: (jitter: () => number) => Promise<DiffStorage>) {
  return fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 1, max: 4 }), async (ops, seed, inQueue) => {
      let x = seed;
      const jitter = () => {
        x = (x * 1103515245 + 12345) & 0x7fffffff;
        return x % 4;
      };
      const origin = new JitteryStorage(SIZE, jitter);
      for (let i = 0; i < SIZE; i++) origin.bytes[i] = (i * 7 + 3) & 0xff;
      const atTake = origin.bytes.slice();
      const device = new Device('d', origin);
      const h = health();
      const diff = await makeDiff(jitter);
      const area = new DiffArea('d', origin, diff, h, { chunkMinimumShift: 12, maximumInQueue: inQueue });
      device.tracker.diffArea = area;
      // Model: device = every device write in order of issue (they never overlap in flight here,
      // see below); image = take-time data plus image writes.
      const expectDevice = atTake.slice();
      const expectImage = atTake.slice();
      const running: Array<Promise<void>> = [];
      const busyImage: Array<[number, number]> = [];
      const busyDevice: Array<[number, number]> = [];
      const busyImageReads: Array<[number, number]> = [];
      const overlaps = (list: Array<[number, number]>, a: number, b: number) => list.some(([s, e]) => a < e && s < b);
      for (const o of ops) {
        const end = Math.min(SIZE, o.offset + o.length);
        const length = end - o.offset;
        if (o.kind === 'deviceWrite' || o.kind === 'deviceStream') {
          if (overlaps(busyDevice, o.offset, end)) await Promise.all(running);
          expectDevice.fill(o.byte, o.offset, end);
          busyDevice.push([o.offset, end]);
          const data = new Uint8Array(length).fill(o.byte);
          if (o.kind === 'deviceWrite') running.push(Promise.resolve(device.write(o.offset, data, IoFlag.None)));
          // A payload arriving in parts, some event-loop turns apart, while everything else runs.
          else running.push(streamInParts(device, o.offset, data, o.kind === 'deviceStream' ? o.parts : 1, jitter));
        } else if (o.kind === 'imageDiscard') {
          // The whole chunks of the range read as zeros from now on (a backup letting go of what it read).
          if (overlaps(busyImage, o.offset, end) || overlaps(busyImageReads, o.offset, end)) await Promise.all(running);
          for (let c = Math.ceil(o.offset / CHUNK); c * CHUNK < SIZE && Math.min((c + 1) * CHUNK, SIZE) <= end; c++) expectImage.fill(0, c * CHUNK, Math.min((c + 1) * CHUNK, SIZE));
          busyImage.push([o.offset, end]);
          running.push(area.discardImage(o.offset, length));
        } else if (o.kind === 'imageWrite') {
          // Like any block device, an image read racing an image write of the same bytes may see
          // either; the model keeps them apart (reads racing *device* writes are the point).
          if (overlaps(busyImage, o.offset, end) || overlaps(busyImageReads, o.offset, end)) await Promise.all(running);
          expectImage.fill(o.byte, o.offset, end);
          busyImage.push([o.offset, end]);
          running.push(area.writeImage(o.offset, new Uint8Array(length).fill(o.byte)));
        } else {
          // A read racing writes to the same range of the image would be undefined; of the device, it is the point.
          if (overlaps(busyImage, o.offset, end)) await Promise.all(running);
          busyImageReads.push([o.offset, end]);
          const into = new Uint8Array(length);
          const want = expectImage.slice(o.offset, end);
          // At once where nothing can race it (readImageNow), else the async path.
          if (area.readImageNow(o.offset, into)) assert.deepEqual(into, want, `image read at once ${o.offset}+${length}`);
          else running.push(area.readImage(o.offset, into).then(() => assert.deepEqual(into, want, `image read ${o.offset}+${length}`)));
        }
      }
      await Promise.all(running);
      assert.equal(h.error, null);
      assert.deepEqual(origin.bytes, expectDevice, 'device');
      const image = new Uint8Array(SIZE);
      await area.readImage(0, image);
      assert.deepEqual(image, expectImage, 'image');
      await diff.close();
  });
}

describe('DiffArea races', () => {
  it('images show the take-time data under concurrent device writes; image writes never reach the device', async () => {
    await fc.assert(
      imagesUnderRaces(async (jitter) => memoryDiff(new JitteryStorage(64 * CHUNK, jitter), 64 * CHUNK)),
      {
        numRuns: Number(process.env.BLKSNAP_PROPERTY_RUNS ?? 150),
        // Once found: a read spanning a chunk being copied and the next chunk, racing an image write there.
        examples: [[[{ kind: 'deviceWrite', offset: 0, length: 1, byte: 1 }, { kind: 'imageRead', offset: 0, length: 4097 }, { kind: 'imageWrite', offset: 4096, length: 1, byte: 1 }, { kind: 'deviceWrite', offset: 0, length: 1, byte: 1 }], 0, 1]],
      },
    );
  });

  it('the same races over a difference storage on disk whose copies are written with O_DIRECT and read through the page cache', async () => {
    const tmp = tempDir();
    try {
      await fc.assert(
        imagesUnderRaces(async () => {
          const diff = await DiffStorage.open(tmp.dir, { limit: 64 * CHUNK, minimum: 64 * CHUNK, devices: [], isCopyDirect: true });
          assert.equal(diff.isCopyDirect, true, 'this filesystem takes O_DIRECT: the direct copies are what run');
          return diff;
        }),
        { numRuns: Number(process.env.BLKSNAP_PROPERTY_RUNS ?? 100) },
      );
    } finally {
      tmp.remove();
    }
  });

  it('a take in the middle of writes and streamed writes finds each wholly in or wholly out', async () => {
    const write = fc.record({ slot: fc.nat(7), byte: fc.integer({ min: 1, max: 255 }), parts: fc.integer({ min: 0, max: 4 }) });
    await fc.assert(
      fc.asyncProperty(fc.array(write, { minLength: 1, maxLength: 12 }), fc.nat(12), fc.integer({ min: 0, max: 2 ** 31 }), async (writes, takeAt, seed) => {
        let x = seed;
        const jitter = () => {
          x = (x * 1103515245 + 12345) & 0x7fffffff;
          return x % 4;
        };
        const SLOT = 2 * CHUNK + 100; // writes span chunks, never slots
        const origin = new JitteryStorage(8 * SLOT, jitter);
        const device = new Device('d', origin);
        const area = new DiffArea('d', origin, memoryDiff(new JitteryStorage(64 * CHUNK, jitter), 64 * CHUNK), health(), { chunkMinimumShift: 12, maximumInQueue: 2 });
        const running: Array<Promise<void>> = [];
        const busy = new Set<number>();
        const taken = { bytes: new Uint8Array(0) };
        const take = async (): Promise<void> => {
          // As Snapshot.take: hold (waits for the writes in flight), copy-on-write on, release.
          await device.tracker.hold();
          taken.bytes = origin.bytes.slice();
          device.tracker.diffArea = area;
          device.tracker.release();
        };
        for (const [i, w] of writes.entries()) {
          if (i === takeAt) running.push(take());
          if (busy.has(w.slot)) await Promise.all(running);
          busy.add(w.slot);
          const data = new Uint8Array(SLOT).fill(w.byte);
          running.push(w.parts === 0 ? Promise.resolve(device.write(w.slot * SLOT, data, IoFlag.None)) : streamInParts(device, w.slot * SLOT, data, w.parts, jitter));
        }
        if (takeAt >= writes.length) running.push(take());
        await Promise.all(running);
        const image = new Uint8Array(8 * SLOT);
        await area.readImage(0, image);
        assert.deepEqual(image, taken.bytes, 'the image is the device as the take found it');
        for (let slot = 0; slot < 8; slot++) {
          const range = image.subarray(slot * SLOT, (slot + 1) * SLOT);
          assert.ok(range.every((b) => b === range[0]), `slot ${slot}: a write half in, half out of the image`);
        }
      }),
      { numRuns: Number(process.env.BLKSNAP_PROPERTY_RUNS ?? 150) },
    );
  });

  it('image sends a client has not read yet are remembered for at most 16384 chunks, then reads are copied (bounded memory)', async () => {
    const origin = { size: 32768 * CHUNK, fast: { isCached: () => true, sendTo: (_fd: number, prefix: Uint8Array, _offset: number, length: number) => prefix.length + length } } as unknown as MemoryStorage;
    const area = new DiffArea('d', origin, memoryDiff(new MemoryStorage(CHUNK), CHUNK), health(), { chunkMinimumShift: 12, maximumInQueue: 4 });
    let isRead = false;
    const sink = { fd: 3, knowsWhenRead: true, isRead: () => isRead, whenRead: async () => {} };
    let sent = 0;
    for (let i = 0; i < 32768; i++) if (area.sendImageNow(sink, new Uint8Array(16), i * CHUNK, CHUNK) !== null) sent++;
    assert.equal(sent, 16384, 'sends stop at the bound while the client has read nothing');
    // Once the client has read everything, the next sweep forgets the entries and sends go on.
    isRead = true;
    await new Promise((r) => setTimeout(r, 15));
    assert.notEqual(area.sendImageNow(sink, new Uint8Array(16), 0, CHUNK), null);
  });

  it('a chunk another thread reads from the device (ImageReadGate) holds a write to it until that read ends; a read starting after the write began backs off', async () => {
    const origin = new MemoryStorage(16 * CHUNK).withFastPaths();
    origin.bytes.fill(0x11);
    const device = new Device('d', origin);
    const area = new DiffArea('d', origin, memoryDiff(new MemoryStorage(16 * CHUNK), 16 * CHUNK), health(), { chunkMinimumShift: 12, maximumInQueue: 4 });
    device.tracker.diffArea = area;
    const gate = area.readGate;
    const chunk = 3;
    const pin = 1 + (chunk % (gate.pins.length - 1));
    const original = () => origin.bytes.subarray(chunk * CHUNK, (chunk + 1) * CHUNK);
    // A FUSE reader thread, as it does: pin, see the chunk untouched, read while pinned.
    Atomics.add(gate.pins, pin, 1);
    assert.equal(Atomics.load(gate.pins, 0), 0, 'the image is readable');
    assert.equal(Atomics.load(gate.state, chunk), 0, 'the chunk is untouched');
    let hasLanded = false;
    const write = Promise.resolve(device.write(chunk * CHUNK, Buffer.alloc(CHUNK, 0x22), IoFlag.None)).then(() => {
      hasLanded = true;
    });
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    assert.notEqual(Atomics.load(gate.state, chunk), 0, 'the chunk left the untouched state: a reader starting now backs off');
    assert.equal(hasLanded, false, 'the write landed while another thread was reading the chunk from the device');
    assert.ok(original().every((b) => b === 0x11), 'the pinned reader still reads the original');
    Atomics.sub(gate.pins, pin, 1);
    await write;
    assert.ok(original().every((b) => b === 0x22));
    const kept = Buffer.alloc(CHUNK);
    await area.readImage(chunk * CHUNK, kept);
    assert.ok(kept.every((b) => b === 0x11), 'the image keeps the original');
    area.stop();
    assert.equal(Atomics.load(gate.pins, 0), 1, 'a destroyed image is read by the daemon alone (it fails there)');
  });

  it('a range being spliced from the device for an image read holds a write to its chunks until the pipe holds the original', async () => {
    // splice reads the device when the thread pool runs it, maybe after a write arrived: that write's
    // copy-on-write keeps the original, but the write itself must wait until the splice has read.
    const origin = new MemoryStorage(16 * CHUNK);
    let finish = (): void => undefined;
    let spliced: Uint8Array | null = null;
    origin.withFastPaths({
      canSpliceOnce: () => true,
      spliceOnce: (offset, length) =>
        new Promise<void>((resolve) => {
          finish = () => {
            spliced = origin.bytes.slice(offset, offset + length); // what the disk holds when the splice runs
            resolve();
          };
        }),
    });
    origin.bytes.fill(0x11);
    const device = new Device('d', origin);
    const area = new DiffArea('d', origin, memoryDiff(new MemoryStorage(16 * CHUNK), 16 * CHUNK), health(), { chunkMinimumShift: 12, maximumInQueue: 4 });
    device.tracker.diffArea = area;
    const pipe = { readFd: -1, writeFd: -1, capacity: 1 << 20 };
    const splicing = area.spliceImage(3 * CHUNK, 2 * CHUNK, pipe);
    assert.ok(splicing, 'untouched chunks are spliced');
    let hasLanded = false;
    const write = Promise.resolve(device.write(4 * CHUNK, Buffer.alloc(CHUNK, 0x22), IoFlag.None)).then(() => {
      hasLanded = true;
    });
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    assert.equal(hasLanded, false, 'the write landed while the splice had yet to read its chunk');
    finish();
    await splicing;
    await write;
    assert.ok((spliced as Uint8Array | null)?.every((b) => b === 0x11), 'the splice read the original');
    assert.ok(origin.bytes.subarray(4 * CHUNK, 5 * CHUNK).every((b) => b === 0x22), 'the device has the write');
    assert.equal(area.spliceImage(3 * CHUNK, 2 * CHUNK, pipe), null, 'a kept chunk is not spliced from the device');
    const image = Buffer.alloc(2 * CHUNK);
    await area.readImage(3 * CHUNK, image);
    assert.ok(image.every((b) => b === 0x11), 'the image keeps the original');
    area.stop();
  });

  it('image reads of device ranges not in the page cache, by another thread or the daemon, read the disk once and bring no page in', async () => {
    // Image reads of untouched chunks go past the page cache (reads once). A FUSE thread's try of
    // the cache (preadv2 RWF_NOWAIT) that misses starts read-ahead of the range, which the
    // daemon's direct read would then read again: the thread asks the cache first.
    const tmp = tempDir();
    const file = path.join(tmp.dir, 'device');
    const content = randomBytes(16 * CHUNK);
    fs.writeFileSync(file, content);
    const origin = await FileStorage.open(file);
    try {
      const fd = origin.readDescriptor();
      const cachedPages = (): number => {
        let n = 0;
        for (let p = 0; p < content.length; p += 4096) if (isRangeCached(fd, p, 4096)) n++;
        return n;
      };
      fs.fsyncSync(fd);
      await check('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
      assert.equal(cachedPages(), 0, 'dd dropped the device from the page cache');
      const area = new DiffArea('d', origin, memoryDiff(new MemoryStorage(16 * CHUNK), 16 * CHUNK), health(), { chunkMinimumShift: 12, maximumInQueue: 4 });
      const thread = { fd, size: content.length, image: area.readGate };
      const into = Buffer.alloc(2 * CHUNK);
      assert.equal(readFromCache(thread, into, 3 * CHUNK), false, 'nothing is cached: the daemon answers');
      await new Promise((r) => setTimeout(r, 100)); // read-ahead, had the try started it, lands meanwhile
      assert.equal(cachedPages(), 0, "the thread's try of the cache brought pages in");
      await area.readImage(3 * CHUNK, into);
      assert.ok(into.equals(content.subarray(3 * CHUNK, 5 * CHUNK)));
      assert.equal(cachedPages(), 0, "the daemon's read brought pages in");
      area.stop();
    } finally {
      await origin.close();
      tmp.remove();
    }
  });

  it('a write over many chunks keeps at most chunk_maximum_in_queue copies under way', async () => {
    const origin = new JitteryStorage(64 * CHUNK, () => 1);
    const device = new Device('d', origin);
    const area = new DiffArea('d', origin, memoryDiff(new MemoryStorage(64 * CHUNK), 64 * CHUNK), health(), { chunkMinimumShift: 12, maximumInQueue: 2 });
    device.tracker.diffArea = area;
    let most = 0;
    let isDone = false;
    const watch = (async () => {
      while (!isDone) {
        most = Math.max(most, area.copiesInFlight);
        await new Promise((r) => setImmediate(r));
      }
    })();
    await device.trim(0, 64 * CHUNK, IoFlag.None);
    isDone = true;
    await watch;
    assert.ok(most >= 1 && most <= 2, `copies under way at once: ${most}`);
    assert.ok(area.chunks.state.every((s) => s === 2), 'every chunk kept');
  });

  it('concurrent writers of one chunk share one copy; a full store corrupts once and writes go on', async () => {
    const origin = new JitteryStorage(8 * CHUNK, () => 2);
    origin.bytes.fill(0xaa);
    const device = new Device('d', origin);
    const h = health();
    let allocations = 0;
    const diff = memoryDiff(new MemoryStorage(8 * CHUNK), 2 * CHUNK);
    const allocate = diff.allocate.bind(diff);
    (diff as { allocate: DiffStorage['allocate'] }).allocate = (l, a) => {
      allocations++;
      return allocate(l, a);
    };
    const area = new DiffArea('d', origin, diff, h, { chunkMinimumShift: 12, maximumInQueue: 256 });
    device.tracker.diffArea = area;
    await Promise.all(Array.from({ length: 10 }, (_, i) => device.write(i * 10, new Uint8Array([i]), IoFlag.None)));
    assert.equal(allocations, 1, 'ten writes to one chunk, one copy');
    // Chunks 1..7: only one more fits.
    await Promise.all(Array.from({ length: 7 }, (_, i) => device.write((i + 1) * CHUNK, new Uint8Array(CHUNK).fill(0xbb), IoFlag.None)));
    assert.equal(h.error?.code, 'ENOSPC');
    assert.equal(h.events, 1, 'the first error wins');
    assert.ok(h.failures <= 6, 'copies started after the corruption are not attempted');
    assert.ok(origin.bytes.subarray(CHUNK).every((b) => b === 0xbb), 'every device write landed');
    await assert.rejects(area.readImage(0, new Uint8Array(10)), { code: 'EIO' });
  });
});
