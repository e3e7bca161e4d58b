import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import type { Storage } from '../../../src/backing/storage.js';
import { IoFlag } from '../../../src/core/block-device.js';
import { Device } from '../../../src/core/device.js';

/** A store whose writes wait until the test lets them land. */
class GatedStorage extends MemoryStorage {
  gates: Array<() => void> = [];
  override async write(offset: number, data: Uint8Array): Promise<void> {
    await new Promise<void>((resolve) => this.gates.push(resolve));
    return super.write(offset, data);
  }
}

const tick = () => new Promise((r) => setImmediate(r));

describe('Tracker write gate and CBT marking', () => {
  it('marks the active map for writes, zeroes and trims, before the data lands', async () => {
    const device = new Device('d', new MemoryStorage(8 * 65536));
    await device.write(65536 * 2 + 5, new Uint8Array(10), IoFlag.None);
    await device.zero(65536 * 5, 65536, IoFlag.MayTrim);
    await device.trim(65536 * 7, 1, IoFlag.None);
    assert.deepEqual([...device.tracker.cbt.activeMapCopy()], [0, 0, 1, 0, 0, 1, 0, 1]);
  });

  it('does not mark when tracking is off', async () => {
    const device = new Device('d', new MemoryStorage(65536), { tracking: false });
    await device.write(0, new Uint8Array(1), IoFlag.None);
    assert.deepEqual([...device.tracker.cbt.activeMapCopy()], [0]);
  });

  it('hold() waits for writes in flight and holds new ones until release()', async () => {
    const storage = new GatedStorage(4 * 65536);
    const device = new Device('d', storage);
    const first = device.write(0, new Uint8Array([1]), IoFlag.None);
    await tick();
    assert.equal(device.tracker.writesInFlight, 1);
    let isHeld = false;
    const held = device.tracker.hold().then(() => (isHeld = true));
    await tick();
    assert.equal(isHeld, false, 'hold must wait for the write in flight');
    const second = device.write(65536, new Uint8Array([2]), IoFlag.None);
    storage.gates.shift()?.();
    await first;
    await held;
    assert.equal(isHeld, true);
    await tick();
    assert.equal(storage.gates.length, 0, 'the write that came during the hold must not reach the store');
    assert.equal(device.tracker.writesInFlight, 0);
    // The switch happens while held: the first write is in the old epoch, the second in the new one.
    device.tracker.switchCbt();
    device.tracker.release();
    await tick();
    storage.gates.shift()?.();
    await second;
    assert.deepEqual([...device.tracker.cbt.readMap(0, 4)], [1, 0, 0, 0]);
    assert.deepEqual([...device.tracker.cbt.activeMapCopy()], [1, 2, 0, 0]);
  });

  it('FUA writes flush the store', async () => {
    const storage = new MemoryStorage(65536);
    const device = new Device('d', storage);
    await device.write(0, new Uint8Array(1), IoFlag.Fua);
    assert.equal(storage.flushCount, 1);
  });

  it('a capacity change resets the map (new generation) at the next switch', async () => {
    const storage = new MemoryStorage(65536);
    const device = new Device('d', storage);
    await device.write(0, new Uint8Array(1), IoFlag.None);
    device.tracker.switchCbt();
    const generation = device.tracker.cbt.generationId;
    storage.resize(3 * 65536);
    device.tracker.switchCbt();
    const cbt = device.tracker.cbt;
    assert.notEqual(cbt.generationId, generation);
    assert.equal(cbt.blockCount, 3);
    assert.equal(cbt.previousNumber, 1);
    assert.deepEqual([...cbt.readMap(0, 3)], [0, 0, 0]);
  });

  it('rejects I/O past the end and on a read-only device with the right errno', async () => {
    const rw = new Device('d', new MemoryStorage(65536));
    assert.throws(() => rw.write(65530, new Uint8Array(10), IoFlag.None), { code: 'ENOSPC' });
    assert.throws(() => rw.read(65536, new Uint8Array(1)), { code: 'EINVAL' });
    const ro = new Device('r', new MemoryStorage(65536, { readOnly: true }) as Storage);
    assert.throws(() => ro.write(0, new Uint8Array(1), IoFlag.None), { code: 'EPERM' });
  });

  it('close() waits for I/O in flight, then refuses new I/O with ESHUTDOWN', async () => {
    const storage = new GatedStorage(65536);
    const device = new Device('d', storage);
    const write = device.write(0, new Uint8Array([7]), IoFlag.None);
    let isClosed = false;
    let closeEvents = 0;
    device.onClose(() => closeEvents++);
    const closing = device.close().then(() => (isClosed = true));
    await tick();
    assert.equal(isClosed, false);
    assert.throws(() => device.read(0, new Uint8Array(1)), { code: 'ESHUTDOWN' });
    storage.gates.shift()?.();
    await write;
    await closing;
    assert.equal(closeEvents, 1);
    assert.equal(storage.bytes[0], 7);
  });
});
