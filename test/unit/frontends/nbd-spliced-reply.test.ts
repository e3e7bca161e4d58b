// A spliced read reply (an image read past the page cache: the disk's bytes in a pipe, spliced into
// the socket) that the socket cannot take whole goes on by splice once the socket has room, a small
// piece at a time being queued to learn when: every reply must still arrive whole and in order.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { type BlockDevice, IoFlag } from '../../../src/core/block-device.js';
import type { Device } from '../../../src/core/device.js';
import { Registry } from '../../../src/core/registry.js';
import { NbdServer } from '../../../src/frontends/nbd/server.js';
import { NbdClient } from '../../helpers/nbd-client.js';
import { tempDir } from '../../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;

/** `device` as an export whose reads all go by splice: the range's bytes written into the pipe. */
function splicing(device: Device, calls: { splices: number }): BlockDevice {
  const unused = (): never => {
    throw new Error('not used by reads');
  };
  return {
    name: 'disk',
    size: device.size,
    isReadOnly: true,
    canTrim: false,
    read: (offset, into) => device.read(offset, into),
    write: unused,
    zero: unused,
    trim: unused,
    flush: () => device.flush(),
    extents: (offset, length, maximumCount) => device.extents(offset, length, maximumCount),
    cache: (offset, length) => device.cache(offset, length),
    onClose: device.onClose,
    changes: () => device.changes(),
    fast: {
      readNow: () => false,
      sendTo: () => null,
      spliceTo: (pipe, offset, length) => {
        calls.splices++;
        return (async () => {
          const data = Buffer.alloc(length);
          await device.read(offset, data);
          for (let done = 0; done < length; ) done += fs.writeSync(pipe.writeFd, data, done, length - done);
        })();
      },
      sharedReads: () => null,
      writeNow: () => false,
      streamWrite: () => null,
      writeChunks: unused,
    },
  };
}

describe('NBD read replies by splice, cut short by a full socket', () => {
  let tmp: { dir: string; remove: () => void };
  let server: NbdServer;
  let client: NbdClient;
  let device: Device;
  const calls = { splices: 0 };

  before(async () => {
    tmp = tempDir();
    device = await new Registry().attach(new MemoryStorage(SIZE, { path: '/test/disk' }));
    const data = Buffer.alloc(SIZE);
    for (let at = 0; at < SIZE; at += 4) data.writeUInt32LE(at, at);
    await device.write(0, data, IoFlag.None);
    const exported = splicing(device, calls);
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

  it('arrive whole and in order when the client stops reading with far more in flight than the socket holds', { timeout: 60_000 }, async () => {
    for (let round = 0; round < 3; round++) {
      // 48 replies of up to 1 MiB against the 8 MiB send buffer; offsets 4 KiB apart, lengths not a multiple of a page.
      client.pause();
      const reads = Array.from({ length: 48 }, (_, i) => {
        const offset = ((i * 13 + round * 7) % 62) * MiB + (i % 5) * 4 * KiB;
        const length = MiB - (i % 7) * 12_300;
        return client.pread(offset, length).then((data) => ({ offset, length, data }));
      });
      await new Promise((r) => setTimeout(r, 200));
      client.resume();
      for (const r of await Promise.all(reads)) {
        assert.equal(r.data.length, r.length);
        for (let at = 0; at < r.length; at += 4) {
          if (r.data.readUInt32LE(at) !== r.offset + at) assert.fail(`the read at ${r.offset}+${r.length} has wrong bytes at ${r.offset + at}`);
        }
      }
    }
    assert.ok(calls.splices >= 144, `the reads went by splice (${calls.splices})`);
  });
});
