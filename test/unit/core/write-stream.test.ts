// A write whose data arrives in parts: one tracked write — errors, FUA, and a take holding the device.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { IoFlag } from '../../../src/core/block-device.js';
import { Device } from '../../../src/core/device.js';
import type { WriteIntent } from '../../../src/cbt/write-intent.js';
import { BlkError } from '../../../src/errors.js';
import { PartsSource } from '../../helpers/parts.js';

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

describe('a write whose data arrives in parts', () => {
  it('a failed part fails the write, drops the parts after it and leaves the tracker', async () => {
    const store = new LoggingStorage(256 * KiB);
    store.failAt = 64 * KiB;
    const device = new Device('d', store);
    const parts = new PartsSource(192 * KiB);
    const written = device.write(0, parts, IoFlag.None);
    assert.equal(device.tracker.writesInFlight, 1);
    for (let at = 0; at < 192 * KiB; at += 64 * KiB) parts.push(new Uint8Array(64 * KiB).fill(7));
    parts.end();
    await assert.rejects(Promise.resolve(written), { code: 'EIO' });
    assert.deepEqual(store.log, ['write 0'], 'nothing lands after the failed part');
    assert.equal(device.tracker.writesInFlight, 0);
    await device.close(); // nothing left in flight: detach does not wait
  });

  it('FUA flushes once, after the last part', async () => {
    const store = new LoggingStorage(256 * KiB);
    const device = new Device('d', store);
    const parts = new PartsSource(8 * KiB);
    const written = device.write(4 * KiB, parts, IoFlag.Fua);
    parts.push(new Uint8Array(4 * KiB));
    parts.push(new Uint8Array(4 * KiB));
    parts.end();
    await written;
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
    const parts = new PartsSource(128 * KiB);
    const written = device.write(0, parts, IoFlag.None);
    parts.push(new Uint8Array(64 * KiB).fill(1));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(store.log, [], 'held: nothing landed');
    device.tracker.release();
    parts.push(new Uint8Array(64 * KiB).fill(2));
    parts.end();
    await written;
    assert.deepEqual([...store.log].sort(), ['write 0', `write ${64 * KiB}`]);
    assert.equal(device.tracker.cbt.activeMapCopy()[0], device.tracker.cbt.activeNumber, 'marked after the take, with its number');
    assert.equal(device.tracker.writesInFlight, 0);
  });
});

describe('the one write entry', () => {
  it('admits a write once when the store declines to take it at once (one mark, one write-intent admission)', async () => {
    const store = new MemoryStorage(256 * KiB).withFastPaths({ writeNow: () => false });
    let admissions = 0;
    const intent = { admit: () => void admissions++, resize: () => undefined } as unknown as WriteIntent;
    const device = new Device('d', store, { intent });
    await device.write(0, Buffer.alloc(4 * KiB, 3), IoFlag.None);
    assert.equal(admissions, 1);
    assert.equal(device.tracker.writesInFlight, 0);
    assert.equal(store.bytes[0], 3, 'the write landed the slower way');
    // Taken at once: no promise, still one admission.
    const atOnce = new Device('e', new MemoryStorage(256 * KiB).withFastPaths(), { intent });
    assert.equal(atOnce.write(0, Buffer.alloc(4 * KiB, 4), IoFlag.None), undefined);
    assert.equal(admissions, 2);
  });
});
