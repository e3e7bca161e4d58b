// O_DIRECT access to the difference storage's file: any offset and length, concurrent partial-block
// writes to one block keeping each other's bytes, and the page cache left without the file's pages.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { DIRECT_ALIGNMENT, DirectFile } from '../../../src/backing/direct-file.js';
import { isRangeCached } from '../../../src/os/libc.js';
import { tempDir } from '../../helpers/tools.js';

const SIZE = 16 * DIRECT_ALIGNMENT;
const PAGE_SIZE = 4096;

describe('DirectFile', () => {
  const tmp = tempDir();
  let fd = -1;
  let file: DirectFile;
  before(async () => {
    const name = path.join(tmp.dir, 'diff');
    // Sparse: no page of it is cached to begin with.
    fs.writeFileSync(name, '');
    fs.truncateSync(name, SIZE);
    fd = fs.openSync(name, 'r+');
    const opened = await DirectFile.reopen(name, fd, 0);
    assert.ok(opened, 'this filesystem takes O_DIRECT');
    file = opened;
  });
  after(async () => {
    await file.close();
    fs.closeSync(fd);
    tmp.remove();
  });

  it('reads and writes of any offset and length match a byte model, at once and in sequence', async () => {
    const model = Buffer.alloc(SIZE);
    await file.write(0, model);
    const access = fc.record({ isWrite: fc.boolean(), offset: fc.nat(SIZE - 1), length: fc.integer({ min: 1, max: 3 * DIRECT_ALIGNMENT }), byte: fc.integer({ min: 0, max: 255 }) });
    await fc.assert(
      fc.asyncProperty(fc.array(access, { minLength: 1, maxLength: 20 }), async (accesses) => {
        for (const a of accesses) {
          const length = Math.min(a.length, SIZE - a.offset);
          if (a.isWrite) {
            // From an unaligned view, as a request payload is.
            const data = Buffer.alloc(length + 1, a.byte).subarray(1);
            await file.write(a.offset, data);
            model.fill(a.byte, a.offset, a.offset + length);
          } else {
            const into = Buffer.alloc(length);
            await file.read(a.offset, into);
            assert.deepEqual(into, model.subarray(a.offset, a.offset + length));
          }
        }
      }),
      { numRuns: 100 },
    );
  });

  it('concurrent writes of single bytes all over one block each keep their byte (read-modify-write one at a time)', async () => {
    await file.write(0, Buffer.alloc(2 * DIRECT_ALIGNMENT));
    const offsets = Array.from({ length: 2 * DIRECT_ALIGNMENT }, (_, i) => i).filter((i) => i % 7 === 3);
    await Promise.all(offsets.map((i) => file.write(i, Buffer.from([(i % 255) + 1]))));
    const back = Buffer.alloc(2 * DIRECT_ALIGNMENT);
    await file.read(0, back);
    const lost = offsets.filter((i) => back[i] !== (i % 255) + 1);
    assert.deepEqual(lost, [], `${lost.length} of ${offsets.length} bytes lost`);
    assert.ok(back.every((b, i) => i % 7 === 3 || b === 0), 'bytes nobody wrote stay zero');
  });

  it('writeFrom pads a partial last block with zeroes; nothing of the file lands in the page cache', async () => {
    const at = 4 * DIRECT_ALIGNMENT;
    await file.writeFrom(at, 1000, async (into) => void into.fill(0x5a));
    const back = Buffer.alloc(DIRECT_ALIGNMENT);
    await file.read(at, back);
    assert.ok(back.subarray(0, 1000).every((b) => b === 0x5a));
    assert.ok(back.subarray(1000).every((b) => b === 0), 'the padding is zeroes, not old bytes');
    await file.write(at + 10, Buffer.alloc(3 * DIRECT_ALIGNMENT, 1));
    await file.read(at + 5, Buffer.alloc(3 * DIRECT_ALIGNMENT));
    const cachedPages = (): number => {
      let n = 0;
      for (let p = 0; p < SIZE; p += PAGE_SIZE) if (isRangeCached(fd, p, PAGE_SIZE)) n++;
      return n;
    };
    assert.equal(cachedPages(), 0, 'direct writes, read-modify-writes and reads bring no page of the file into the cache');
    fs.readSync(fd, Buffer.alloc(10), 0, 10, at);
    assert.ok(cachedPages() >= 1, 'while a buffered read does (the check sees cached pages)');
  });

  it('an unaligned writeFrom offset is refused with EINVAL', async () => {
    await assert.rejects(file.writeFrom(100, 10, async () => {}), { code: 'EINVAL' });
  });
});
