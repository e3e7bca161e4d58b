// A file written front to back (a repository's pack): every byte appended lands in order whatever the
// sizes, by O_DIRECT without page-cache pages where the filesystem allows, buffered where it does not.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { AppendFile } from '../../../src/os/append-file.js';
import { isRangeCached } from '../../../src/os/libc.js';
import { mountSkip, onRamfs } from '../../helpers/mounts.js';
import { tempDir } from '../../helpers/tools.js';

const MiB = 1024 * 1024;

/** Appends pieces of awkward sizes (plain and in place, some larger than the stage); returns what the file must hold. */
function fill(file: AppendFile): Buffer {
  const pieces: Buffer[] = [];
  // Odd places go in place: 1 MiB after 3 MiB, 2 MiB after 11 bytes and 3 MiB after that find the
  // stage short of room with a partial block in it; 4 MiB is more than the stage holds.
  const sizes = [1, 48, 4095, 4096, 4097, 65536 + 300, 3 * MiB + 17, MiB, 5 * MiB + 1, 4 * MiB, 7, 2 * MiB + 3, 11, 3 * MiB];
  sizes.forEach((size, i) => {
    const piece = randomBytes(size);
    if (i % 2 === 0) file.append(piece);
    else
      file.appendInPlace(size + 100, (into) => {
        assert.ok(into.length >= size + 100, 'the view holds the maximum asked for');
        piece.copy(into);
        return size;
      });
    pieces.push(piece);
  });
  return Buffer.concat(pieces);
}

describe('AppendFile', () => {
  it('holds exactly the bytes appended, in order, and caches no page of them (O_DIRECT)', () => {
    const tmp = tempDir();
    try {
      const name = path.join(tmp.dir, 'pack');
      const file = AppendFile.create(name);
      assert.equal(file.isDirect, true, 'this filesystem takes O_DIRECT');
      const expected = fill(file);
      assert.equal(file.size, expected.length);
      file.finish();
      const fd = fs.openSync(name, 'r');
      try {
        const cached: number[] = [];
        for (let at = 0; at < expected.length; at += 4096) if (isRangeCached(fd, at, 4096)) cached.push(at);
        // Cutting the last block's padding off zeroes its tail through the page cache: that page only.
        const lastPage = Math.floor((expected.length - 1) / 4096) * 4096;
        assert.deepEqual(cached.filter((at) => at !== lastPage), [], 'no page of the file went through the page cache');
      } finally {
        fs.closeSync(fd);
      }
      assert.ok(fs.readFileSync(name).equals(expected), 'the file is the appends, with no padding left');
    } finally {
      tmp.remove();
    }
  });

  it('writes through the page cache where the filesystem refuses O_DIRECT (ramfs)', { skip: mountSkip }, () =>
    onRamfs((dir) => {
      const name = path.join(dir, 'pack');
      const file = AppendFile.create(name);
      assert.equal(file.isDirect, false);
      const expected = fill(file);
      file.finish();
      assert.ok(fs.readFileSync(name).equals(expected));
    }));

  it('an empty file stays empty', () => {
    const tmp = tempDir();
    try {
      const name = path.join(tmp.dir, 'pack');
      AppendFile.create(name).finish();
      assert.equal(fs.statSync(name).size, 0, 'the probe block is cut off');
    } finally {
      tmp.remove();
    }
  });
});
