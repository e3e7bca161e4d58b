// A spliced read reply (an image read past the page cache: the disk's bytes in a pipe, spliced into
// the socket) that the socket cannot take whole goes on by splice once the socket has room, a small
// piece at a time being queued to learn when: every reply must still arrive whole and in order.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { isPatternAt, serveSpliceExport, type SpliceExport } from '../../helpers/splice-export.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('NBD read replies by splice, cut short by a full socket', () => {
  let served: SpliceExport;
  const calls = { splices: 0 };

  before(async () => {
    // Every read goes by splice: the range's bytes written into the pipe.
    served = await serveSpliceExport(64 * MiB, (device) => ({
      read: (offset, into) => device.read(offset, into),
      spliceTo: (pipe, offset, length) => {
        calls.splices++;
        return (async () => {
          const data = Buffer.alloc(length);
          await device.read(offset, data);
          for (let done = 0; done < length; ) done += fs.writeSync(pipe.writeFd, data, done, length - done);
        })();
      },
    }));
  });
  after(async () => {
    await served?.close();
  });

  it('arrive whole and in order when the client stops reading with far more in flight than the socket holds', { timeout: 60_000 }, async () => {
    const { client } = served;
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
        assert.ok(isPatternAt(r.data, r.offset), `the read at ${r.offset}+${r.length} has the bytes there`);
      }
    }
    assert.ok(calls.splices >= 144, `the reads went by splice (${calls.splices})`);
  });
});
