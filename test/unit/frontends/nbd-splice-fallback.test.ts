// An NBD read whose splice fails (an image read past the page cache, by splice from the disk into a
// pipe) is not lost: the plain read serves it, or fails with its own errno, which a failed splice
// cannot tell (it ran in the thread pool).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BlkError } from '../../../src/errors.js';
import { isPatternAt, serveSpliceExport, type SpliceExport } from '../../helpers/splice-export.js';

const KiB = 1024;
const ENOMEM = 12;

describe('NBD reads whose splice fails', () => {
  let served: SpliceExport;
  let failReads = false;
  const calls = { splices: 0 };

  before(async () => {
    // Splices always fail; plain reads fail when the test says so.
    served = await serveSpliceExport(4 * 1024 * KiB, (device) => ({
      read: (offset, into) => (failReads ? Promise.reject(new BlkError('ENOMEM', 'the plain read failed too')) : device.read(offset, into)),
      spliceTo: () => {
        calls.splices++;
        return Promise.reject(new BlkError('EIO', 'splice of a range into a pipe failed'));
      },
    }));
  });
  after(async () => {
    await served?.close();
  });

  it('are served by the plain read', async () => {
    const offset = 256 * KiB;
    const got = await served.client.pread(offset, 512 * KiB);
    assert.ok(calls.splices > 0, 'the read went to the splice first');
    assert.ok(isPatternAt(got, offset), 'the bytes read');
  });

  it("fail with the plain read's errno when it fails too", async () => {
    failReads = true;
    try {
      await assert.rejects(served.client.pread(0, 64 * KiB), (e: { errno?: number }) => e.errno === ENOMEM);
    } finally {
      failReads = false;
    }
    assert.equal((await served.client.pread(0, 64 * KiB)).readUInt32LE(4), 4, 'the connection goes on');
  });
});
