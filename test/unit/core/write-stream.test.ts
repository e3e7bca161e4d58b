// A write whose data arrives in parts: one tracked write — errors, FUA, and a take holding the device.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { IoFlag } from '../../../src/core/block-device.js';
import { Device } from '../../../src/core/device.js';
import { BlkError } from '../../../src/errors.js';

const KiB = 1024;

/** A memory store that writes at once (as the page cache does), logging each landing and flush. */
class LoggingStorage extends MemoryStorage {
  log: string[] = [];
  failAt = -1;
  constructor(size: number) {
    super(size);
    this.withFastPaths({ writeNow: (offset, data) => this.writeNowLogged(offset, data) });
  }
  writeNowLogged(offset: number, data: Uint8Array): boolean {
    if (offset === this.failAt) throw new BlkError('EIO', `write at ${offset} failed`);
    this.bytes.set(data, offset);
    this.log.push(`write ${offset}`);
    return true;
  }
  override async write(offset: number, data: Uint8Array): Promise<void> {
    this.writeNowLogged(offset, data);
  }
  override async flush(): Promise<void> {
    this.log.push('flush');
  }
}

describe('WriteStream', () => {
  it('a failed part fails the write, drops the parts after it and leaves the tracker', async () => {
    const store = new LoggingStorage(256 * KiB);
    store.failAt = 64 * KiB;
    const device = new Device('d', store);
    const stream = device.streamWrite(0, 192 * KiB, IoFlag.None);
    assert.equal(device.tracker.writesInFlight, 1);
    for (let at = 0; at < 192 * KiB; at += 64 * KiB) stream.write(at, new Uint8Array(64 * KiB).fill(7));
    await assert.rejects(stream.end(), { code: 'EIO' });
    assert.deepEqual(store.log, ['write 0'], 'nothing lands after the failed part');
    assert.equal(device.tracker.writesInFlight, 0);
    await device.close(); // nothing left in flight: detach does not wait
  });

  it('FUA flushes once, after the last part', async () => {
    const store = new LoggingStorage(256 * KiB);
    const device = new Device('d', store);
    const stream = device.streamWrite(4 * KiB, 8 * KiB, IoFlag.Fua);
    stream.write(4 * KiB, new Uint8Array(4 * KiB));
    stream.write(8 * KiB, new Uint8Array(4 * KiB));
    await stream.end();
    assert.deepEqual(store.log, [`write ${4 * KiB}`, `write ${8 * KiB}`, 'flush']);
  });

  it('opened while a take holds the device, no part lands before the release; the CBT mark takes the new number', async () => {
    const store = new LoggingStorage(256 * KiB);
    const device = new Device('d', store);
    device.tracker.cbt.mark(0, KiB); // a write before the take: marked with the number then active
    const before = device.tracker.cbt.activeNumber;
    await device.tracker.hold();
    device.tracker.switchCbt();
    assert.notEqual(device.tracker.cbt.activeNumber, before);
    const stream = device.streamWrite(0, 128 * KiB, IoFlag.None);
    stream.write(0, new Uint8Array(64 * KiB).fill(1));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(store.log, [], 'held: nothing landed');
    device.tracker.release();
    stream.write(64 * KiB, new Uint8Array(64 * KiB).fill(2));
    await stream.end();
    assert.deepEqual([...store.log].sort(), ['write 0', `write ${64 * KiB}`]);
    assert.equal(device.tracker.cbt.activeMapCopy()[0], device.tracker.cbt.activeNumber, 'marked after the take, with its number');
    assert.equal(device.tracker.writesInFlight, 0);
  });
});
