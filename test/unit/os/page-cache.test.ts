// The page-cache probe (cachestat) and sendfile used by large NBD reads; copy_file_range used by copy-on-write.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { copyFileRange, isRangeCached, sendFile } from '../../../src/os/libc.js';
import { tempDir } from '../../helpers/tools.js';

const MiB = 1024 * 1024;

describe('page cache probe and sendfile', () => {
  it('tells cached ranges from ranges never read', () => {
    const tmp = tempDir();
    try {
      const file = path.join(tmp.dir, 'f');
      const fd = fs.openSync(file, 'w+');
      fs.ftruncateSync(fd, 64 * MiB);
      fs.writeSync(fd, Buffer.alloc(MiB, 7), 0, MiB, 0);
      assert.equal(isRangeCached(fd, 0, MiB), true);
      assert.equal(isRangeCached(fd, 4095, 2), true);
      // Never written nor read: nothing of it is in memory.
      assert.equal(isRangeCached(fd, 32 * MiB, MiB), false);
      // Half cached is not cached.
      assert.equal(isRangeCached(fd, MiB / 2, MiB), false);
      assert.equal(isRangeCached(fd, 0, 0), false);
      fs.closeSync(fd);
    } finally {
      tmp.remove();
    }
  });

  it('sendfile moves exactly the range asked', () => {
    const tmp = tempDir();
    try {
      const src = path.join(tmp.dir, 'src');
      const data = Buffer.alloc(3 * MiB);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 12)) & 0xff;
      fs.writeFileSync(src, data);
      const inFd = fs.openSync(src, 'r');
      const outFd = fs.openSync(path.join(tmp.dir, 'out'), 'w');
      assert.equal(sendFile(outFd, inFd, 12345, 2 * MiB + 1), 2 * MiB + 1);
      fs.closeSync(inFd);
      fs.closeSync(outFd);
      assert.ok(fs.readFileSync(path.join(tmp.dir, 'out')).equals(data.subarray(12345, 12345 + 2 * MiB + 1)));
    } finally {
      tmp.remove();
    }
  });

  it('copy_file_range copies exactly the range between files; into what is not a regular file it says it cannot', () => {
    const tmp = tempDir();
    try {
      const from = fs.openSync(path.join(tmp.dir, 'from'), 'w+');
      const to = fs.openSync(path.join(tmp.dir, 'to'), 'w+');
      const data = Buffer.from(Array.from({ length: 3 * MiB }, (_, i) => (i * 31 + 7) & 0xff));
      fs.writeSync(from, data, 0, data.length, 0);
      fs.ftruncateSync(to, 4 * MiB);
      assert.equal(copyFileRange(from, MiB + 5, to, 2 * MiB, MiB), MiB);
      const back = Buffer.alloc(4 * MiB);
      fs.readSync(to, back, 0, back.length, 0);
      assert.ok(back.subarray(2 * MiB, 3 * MiB).equals(data.subarray(MiB + 5, 2 * MiB + 5)), 'the range, at its place');
      assert.ok(back.subarray(0, 2 * MiB).every((b) => b === 0) && back.subarray(3 * MiB).every((b) => b === 0), 'nothing else');
      // Short only at the end of the source.
      assert.equal(copyFileRange(from, 3 * MiB - 10, to, 0, MiB), 10);
      // Not a regular file (as a block device store is not): the caller reads and writes instead.
      const devNull = fs.openSync('/dev/null', 'w');
      assert.equal(copyFileRange(from, 0, devNull, 0, 4096), null);
      fs.closeSync(devNull);
      fs.closeSync(from);
      fs.closeSync(to);
    } finally {
      tmp.remove();
    }
  });
});
