// A snapshot's life under the races an auditor found: destroy during a long copy-on-write, takes that
// fail part-way, image writes whose marking fails. Each case failed on the code before its fix.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { FileStorage } from '../../../src/backing/file-storage.js';
import { IoFlag } from '../../../src/core/block-device.js';
import { Device } from '../../../src/core/device.js';
import { DiffStorage } from '../../../src/core/diff-storage.js';
import { defaultDeviceName, imageName, Registry } from '../../../src/core/registry.js';
import { Snapshot, type ImagePublisher } from '../../../src/core/snapshot.js';
import type { SnapImage } from '../../../src/core/snap-image.js';
import { BlkError } from '../../../src/errors.js';
import { sparseFile, tempDir } from '../../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Image names as the registry keeps them: a clash is EEXIST. */
class Exports implements ImagePublisher {
  readonly names = new Set<string>();
  publish(image: SnapImage): void {
    if (this.names.has(image.name)) throw new BlkError('EEXIST', `an export named '${image.name}' already exists`);
    this.names.add(image.name);
  }
  unpublish(image: SnapImage): void {
    this.names.delete(image.name);
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe('snapshot life', () => {
  let tmp: { dir: string; remove: () => void };
  const devices: Device[] = [];

  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(async () => {
    for (const d of devices.splice(0)) await d.close();
    tmp.remove();
  });

  async function device(name: string, size: number, fill?: number): Promise<Device> {
    const file = sparseFile(path.join(tmp.dir, name), size);
    if (fill !== undefined) fs.writeFileSync(file, Buffer.alloc(size, fill));
    // No synchronous fast paths: every copy goes read → write through the thread pool, as on a cold cache.
    const d = new Device(name, await FileStorage.open(file));
    devices.push(d);
    return d;
  }

  it('destroy during a trim over more chunks than the queue holds: no I/O reaches the store after it closes', async () => {
    // Where destroy lands among the microtasks of a finishing copy decides whether the trim's next
    // window starts before or after the drain: try each position.
    const size = 8 * MiB;
    const calls = { afterClose: 0, allocations: 0 };
    let isClosed = false;
    let onAllocation: (() => void) | null = null;
    const spied = ['allocate', 'read', 'write', 'flush'] as const;
    const originals = spied.map((m) => DiffStorage.prototype[m]);
    const close = DiffStorage.prototype.close;
    spied.forEach((m, i) => {
      const original = originals[i] as (...a: unknown[]) => unknown;
      (DiffStorage.prototype as unknown as Record<string, unknown>)[m] = function (this: DiffStorage, ...args: unknown[]) {
        if (isClosed) calls.afterClose++;
        if (m === 'allocate' && ++calls.allocations === 4) onAllocation?.();
        return original.apply(this, args);
      };
    });
    DiffStorage.prototype.close = async function (this: DiffStorage) {
      await close.call(this);
      isClosed = true;
    };
    try {
      for (let delay = 0; delay < 16; delay++) {
        Object.assign(calls, { afterClose: 0, allocations: 0 });
        isClosed = false;
        const d = await device(`dev${delay}`, size);
        const snapshot = new Snapshot({ diffStorage: tmp.dir, limit: 64 * MiB, diffStorageMinimum: 64 * MiB, chunkMinimumShift: 16, chunkMaximumInQueue: 2 }, new Exports());
        snapshot.add(d);
        await snapshot.open();
        await snapshot.take((x) => `${x.name}-image`);
        let destroyed: Promise<void> | null = null;
        onAllocation = () => {
          let ticks = delay;
          const tick = (): void => {
            if (ticks-- > 0) queueMicrotask(tick);
            else destroyed = snapshot.destroy();
          };
          tick();
        };
        // A second writer shares the trim's first copies; the trim goes on window by window.
        const trim = d.trim(0, size, IoFlag.None);
        const write = d.write(64 * KiB, Buffer.alloc(4 * KiB, 1), IoFlag.None);
        await Promise.all([trim, write]);
        while (destroyed === null) await new Promise((r) => setImmediate(r));
        await destroyed;
        assert.equal(calls.afterClose, 0, `destroy ${delay} microtasks after a copy: ${calls.afterClose} difference-storage calls after it closed`);
        const check = Buffer.alloc(4 * KiB);
        await d.read(128 * KiB, check);
        assert.ok(check.every((b) => b === 0), 'the device is as the trim left it');
      }
    } finally {
      onAllocation = null;
      for (const [i, m] of spied.entries()) (DiffStorage.prototype as unknown as Record<string, unknown>)[m] = originals[i];
      DiffStorage.prototype.close = close;
    }
  });

  it('a closed store refuses I/O instead of using a descriptor number that may belong to another file', async () => {
    const file = sparseFile(path.join(tmp.dir, 'store'), MiB);
    const store = await FileStorage.open(file, { syncWriteMaximum: MiB, cachedReadMaximum: MiB });
    const pending = store.write(0, Buffer.alloc(256 * KiB, 3), true);
    const closing = store.close();
    await pending; // a write already under way finishes before the descriptor closes
    await closing;
    const bystander = path.join(tmp.dir, 'bystander');
    const fd = fs.openSync(bystander, 'w+');
    try {
      await assert.rejects(store.write(0, Buffer.alloc(4096, 1)), (e: BlkError) => e.code === 'EBADF');
      assert.throws(() => store.writeNow(0, Buffer.alloc(4096, 1)), (e: BlkError) => e.code === 'EBADF');
      await assert.rejects(store.read(0, Buffer.alloc(4096)), (e: BlkError) => e.code === 'EBADF');
      assert.equal(store.readNow(0, Buffer.alloc(4096)), false);
      await assert.rejects(store.flush(), (e: BlkError) => e.code === 'EBADF');
      await assert.rejects(store.trim(0, 4096), (e: BlkError) => e.code === 'EBADF');
      assert.equal(fs.fstatSync(fd).size, 0, 'nothing reached the file that took the descriptor number');
    } finally {
      fs.closeSync(fd);
    }
    assert.equal(fs.readFileSync(file).subarray(0, 256 * KiB).every((b) => b === 3), true, 'the write under way landed');
  });

  it('a take that fails part-way (one device held by another take) releases every device', async () => {
    const a = await device('a', 4 * MiB);
    const b = await device('b', 4 * MiB);
    const snapshot = new Snapshot({ diffStorage: tmp.dir, limit: 16 * MiB, diffStorageMinimum: 16 * MiB }, new Exports());
    snapshot.add(a);
    snapshot.add(b);
    await snapshot.open();
    // A write in flight on a keeps its drain pending while b's hold fails at once.
    const slow = a.write(0, Buffer.alloc(1 * MiB, 7), IoFlag.Background);
    await b.tracker.hold(); // as a concurrent cbt.switch does
    const before = { a: a.tracker.cbt.previousNumber, b: b.tracker.cbt.previousNumber };
    await assert.rejects(snapshot.take((x) => `${x.name}-image`), (e: BlkError) => e.code === 'EBUSY');
    b.tracker.release();
    await slow;
    // Neither device is left held: writes to both complete.
    await withTimeout(Promise.resolve(a.write(0, Buffer.alloc(4096, 1), IoFlag.None)), 2000, 'write to a after the failed take');
    await withTimeout(Promise.resolve(b.write(0, Buffer.alloc(4096, 1), IoFlag.None)), 2000, 'write to b after the failed take');
    assert.deepEqual({ a: a.tracker.cbt.previousNumber, b: b.tracker.cbt.previousNumber }, before, 'a failed take leaves CBT as it was');
    assert.equal(snapshot.phase, 'created');
    assert.equal(a.tracker.diffArea, null);
    // And the same snapshot can be taken now.
    await snapshot.take((x) => `${x.name}-image`);
    assert.equal(snapshot.phase, 'taken');
    await snapshot.destroy();
  });

  it('a store grown after the snapshot was created: the take makes its chunk maps for the size at the take', async () => {
    // The maps are made before writes are held (a take holds them as briefly as it can); the size is
    // probed while they are held, and a map of the old size would leave the grown part unserved.
    const d = await device('growing', 4 * MiB);
    const file = path.join(tmp.dir, 'growing');
    const snapshot = new Snapshot({ diffStorage: tmp.dir, limit: 64 * MiB, diffStorageMinimum: 64 * MiB, chunkMinimumShift: 16 }, new Exports());
    snapshot.add(d);
    await snapshot.open();
    fs.truncateSync(file, 8 * MiB);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.alloc(64 * KiB, 7), 0, 64 * KiB, 6 * MiB);
    fs.closeSync(fd);
    await snapshot.take((x) => `${x.name}-image`);
    try {
      const image = snapshot.image(d) as SnapImage;
      assert.equal(image.size, 8 * MiB);
      await d.write(6 * MiB, Buffer.alloc(64 * KiB, 9), IoFlag.None); // copied first: the grown part has chunks
      const seen = Buffer.alloc(64 * KiB);
      await image.read(6 * MiB, seen);
      assert.ok(seen.every((b) => b === 7), 'the image keeps the grown part as it was at the take');
    } finally {
      await snapshot.destroy();
    }
  });

  it('beforeHold runs once, before writes are held: a write in it completes and is in the image', async () => {
    // The daemon freezes filesystems there, and a freeze writes back through the device itself:
    // held writes would never let it finish.
    const d = await device('hooked', 4 * MiB);
    const snapshot = new Snapshot({ diffStorage: tmp.dir, limit: 64 * MiB, diffStorageMinimum: 64 * MiB, chunkMinimumShift: 16 }, new Exports());
    snapshot.add(d);
    await snapshot.open();
    let calls = 0;
    await snapshot.take(
      (x) => `${x.name}-image`,
      async () => {
        calls++;
        await withTimeout(Promise.resolve(d.write(0, Buffer.alloc(4 * KiB, 5), IoFlag.None)), 2000, 'a write in beforeHold');
      },
    );
    try {
      assert.equal(calls, 1);
      const seen = Buffer.alloc(4 * KiB);
      await (snapshot.image(d) as SnapImage).read(0, seen);
      assert.ok(seen.every((b) => b === 5), 'the write made before the hold is in the image');
    } finally {
      await snapshot.destroy();
    }
  });

  it('a take that fails on an image name leaves CBT unswitched and no image behind', async () => {
    const a = await device('a', 4 * MiB);
    const b = await device('b', 4 * MiB);
    const exports = new Exports();
    exports.names.add('b-image'); // already taken by someone else
    const snapshot = new Snapshot({ diffStorage: tmp.dir, limit: 16 * MiB, diffStorageMinimum: 16 * MiB }, exports);
    snapshot.add(a);
    snapshot.add(b);
    await snapshot.open();
    const generation = a.tracker.cbt.generationId;
    await assert.rejects(snapshot.take((x) => `${x.name}-image`), (e: BlkError) => e.code === 'EEXIST');
    assert.equal(a.tracker.cbt.previousNumber, 0, 'a was switched by a take that failed');
    assert.equal(b.tracker.cbt.previousNumber, 0, 'b was switched by a take that failed');
    assert.equal(a.tracker.cbt.generationId, generation);
    assert.deepEqual([...exports.names], ['b-image'], 'no image of the failed take is left published');
    assert.equal(a.tracker.diffArea, null);
    await snapshot.destroy();
  });

  it('device names can never clash with image names', async () => {
    const registry = new Registry();
    const open = async (name: string): Promise<FileStorage> => FileStorage.open(sparseFile(path.join(tmp.dir, name), MiB));
    await assert.rejects(registry.attach(await open('a'), { name: 'vm-image' }), (e: BlkError) => e.code === 'EINVAL' && /kept for snapshot images/.test(e.message));
    const byPath = await registry.attach(await open('disk-image'));
    devices.push(byPath);
    assert.equal(byPath.name, 'disk_image');
    assert.equal(imageName(byPath.name), 'disk_image-image');
    assert.equal(defaultDeviceName('/srv/vm1.img'), 'vm1.img');
  });

  it('an image write whose CBT marking throws still ends: destroy does not wait forever', async () => {
    const d = await device('dev', 4 * MiB);
    const snapshot = new Snapshot({ diffStorage: tmp.dir, limit: 16 * MiB, diffStorageMinimum: 16 * MiB }, new Exports());
    snapshot.add(d);
    await snapshot.open();
    await snapshot.take((x) => `${x.name}-image`);
    const image = snapshot.image(d) as SnapImage;
    const cbt = d.tracker.cbt;
    const markBoth = cbt.markBoth;
    cbt.markBoth = () => {
      throw new BlkError('EIO', 'marking failed');
    };
    try {
      await assert.rejects(async () => image.write(0, Buffer.alloc(4096), IoFlag.None), /marking failed/);
    } finally {
      cbt.markBoth = markBoth;
    }
    await withTimeout(snapshot.destroy(), 2000, 'destroy after a failed image write');
  });
});
