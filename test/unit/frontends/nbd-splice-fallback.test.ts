// An NBD read whose splice fails (an image read past the page cache, by splice from the disk into a
// pipe) is not lost: the plain read serves it, or fails with its own errno, which a failed splice
// cannot tell (it ran in the thread pool).
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { type BlockDevice, IoFlag } from '../../../src/core/block-device.js';
import type { Device } from '../../../src/core/device.js';
import { Registry } from '../../../src/core/registry.js';
import { BlkError } from '../../../src/errors.js';
import { NbdServer } from '../../../src/frontends/nbd/server.js';
import { NbdClient } from '../../helpers/nbd-client.js';
import { tempDir } from '../../helpers/tools.js';

const KiB = 1024;
const SIZE = 4 * 1024 * KiB;
const ENOMEM = 12;

/** `device` as an export whose splices always fail, and whose plain reads fail when `failReads` says so. */
function spliceFailing(device: Device, calls: { splices: number }, failReads: () => boolean): BlockDevice {
  return {
    name: 'disk',
    size: device.size,
    isReadOnly: false,
    canTrim: device.canTrim,
    read: (offset, into) => (failReads() ? Promise.reject(new BlkError('ENOMEM', 'the plain read failed too')) : device.read(offset, into)),
    write: (offset, data, flags) => device.write(offset, data, flags),
    zero: (offset, length, flags) => device.zero(offset, length, flags),
    trim: (offset, length, flags) => device.trim(offset, length, flags),
    flush: () => device.flush(),
    extents: (offset, length, maximumCount) => device.extents(offset, length, maximumCount),
    cache: (offset, length) => device.cache(offset, length),
    onClose: device.onClose,
    changes: () => device.changes(),
    fast: {
      readNow: () => false,
      sendTo: () => null,
      spliceTo: () => {
        calls.splices++;
        return Promise.reject(new BlkError('EIO', 'splice of a range into a pipe failed'));
      },
      sharedReads: () => null,
      writeNow: () => false,
      streamWrite: () => null,
      writeChunks: (offset, chunks, flags) => device.write(offset, Buffer.concat(chunks), flags),
    },
  };
}

describe('NBD reads whose splice fails', () => {
  let tmp: { dir: string; remove: () => void };
  let server: NbdServer;
  let client: NbdClient;
  let device: Device;
  let failReads = false;
  const calls = { splices: 0 };

  before(async () => {
    tmp = tempDir();
    device = await new Registry().attach(new MemoryStorage(SIZE, { path: '/test/disk' }));
    const data = Buffer.alloc(SIZE);
    for (let at = 0; at < SIZE; at += 4) data.writeUInt32LE(at, at);
    await device.write(0, data, IoFlag.None);
    const exported = spliceFailing(device, calls, () => failReads);
    const socketPath = path.join(tmp.dir, 'nbd.sock');
    server = new NbdServer({ catalogue: { lookupExport: (n) => (n === 'disk' ? exported : undefined), exports: () => [exported] }, socketPath, sendFileMinimum: 4 * KiB, log: () => undefined });
    await server.start();
    client = await NbdClient.connect(socketPath, 'disk');
  });
  after(async () => {
    client?.close();
    await server?.close();
    await device?.close();
    tmp?.remove();
  });

  it('are served by the plain read', async () => {
    const offset = 256 * KiB;
    const got = await client.pread(offset, 512 * KiB);
    assert.ok(calls.splices > 0, 'the read went to the splice first');
    for (let at = 0; at < got.length; at += 4) assert.equal(got.readUInt32LE(at), offset + at, `the byte at ${offset + at}`);
  });

  it("fail with the plain read's errno when it fails too", async () => {
    failReads = true;
    try {
      await assert.rejects(client.pread(0, 64 * KiB), (e: { errno?: number }) => e.errno === ENOMEM);
    } finally {
      failReads = false;
    }
    assert.equal((await client.pread(0, 64 * KiB)).readUInt32LE(4), 4, 'the connection goes on');
  });
});
