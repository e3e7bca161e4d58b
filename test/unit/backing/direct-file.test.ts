// O_DIRECT access to the difference storage's file: reads of any offset and length, whole-block
// writes from a filler, and no direct descriptor where the filesystem refuses O_DIRECT.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { DirectFile } from '../../../src/backing/direct-file.js';
import { DIRECT_ALIGNMENT } from '../../../src/os/koffi.js';
import { mountSkip, onRamfs } from '../../helpers/mounts.js';
import { tempDir } from '../../helpers/tools.js';

describe('DirectFile', () => {
  it('reads any offset and length as the file holds it; writeFrom pads a partial block with zeroes', async () => {
    const tmp = tempDir();
    const name = path.join(tmp.dir, 'store');
    const content = randomBytes(16 * DIRECT_ALIGNMENT);
    fs.writeFileSync(name, content);
    const fd = fs.openSync(name, 'r+');
    const file = await DirectFile.reopen(name, fd, 0);
    try {
      assert.ok(file, 'this filesystem takes O_DIRECT');
      for (const [offset, length] of [[0, DIRECT_ALIGNMENT], [1, 1], [4095, 2], [5000, 3 * DIRECT_ALIGNMENT + 7], [8 * DIRECT_ALIGNMENT, 8 * DIRECT_ALIGNMENT]] as const) {
        const into = Buffer.alloc(length);
        await file.read(offset, into);
        assert.deepEqual(into, content.subarray(offset, offset + length), `${length} bytes at ${offset}`);
      }
      await file.writeFrom(2 * DIRECT_ALIGNMENT, 1000, async (into) => void into.fill(0x5a));
      const back = Buffer.alloc(DIRECT_ALIGNMENT);
      fs.readSync(fd, back, 0, back.length, 2 * DIRECT_ALIGNMENT);
      assert.ok(back.subarray(0, 1000).every((b) => b === 0x5a));
      assert.ok(back.subarray(1000).every((b) => b === 0), 'the rest of the block is zeroes, not old bytes');
      await assert.rejects(file.writeFrom(100, 10, async () => {}), { code: 'EINVAL' });
    } finally {
      await file?.close();
      fs.closeSync(fd);
      tmp.remove();
    }
  });

  it('is null where the filesystem refuses O_DIRECT (ramfs): the page cache serves instead', { skip: mountSkip }, () =>
    onRamfs(async (dir) => {
      const name = path.join(dir, 'store');
      fs.writeFileSync(name, Buffer.alloc(DIRECT_ALIGNMENT));
      const fd = fs.openSync(name, 'r+');
      try {
        assert.equal(await DirectFile.reopen(name, fd, 0), null);
      } finally {
        fs.closeSync(fd);
      }
    }));
});
