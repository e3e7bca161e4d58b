// A device's digest index (root and pages): read back as written, and a root whose numbers do not add
// up (its checksum recomputed, as a careless or hostile writer would) refused before anything is sized by them.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { sha256 } from '../../../src/backup/chunk-file.js';
import { chunkCountOf, readIndex, readIndexRoot, writeIndex } from '../../../src/backup/digest-index.js';
import { tempDir } from '../../helpers/tools.js';

describe('digest index', () => {
  const t = tempDir('blksnap-digest-index-');
  after(() => t.remove());
  const size = 1300 * 65536 + 4096; // 1301 chunks: three pages, the last one short
  const digests = randomBytes(chunkCountOf(size, 65536) * 32);
  const rootFile = path.join(t.dir, 'disk.index');
  writeIndex(t.dir, rootFile, { size, chunkSize: 65536, digests });

  it('reads back what was written', () => {
    const index = readIndex(t.dir, rootFile);
    assert.equal(index.size, size);
    assert.equal(index.chunkSize, 65536);
    assert.ok(index.digests.equals(digests));
  });

  /** The root with a u64 field changed and its checksum made right again. */
  const tampered = (at: number, value: bigint): string => {
    const root = fs.readFileSync(rootFile);
    root.writeBigUInt64LE(value, at);
    sha256(root.subarray(0, root.length - 32)).copy(root, root.length - 32);
    const file = path.join(t.dir, `tampered-${at}-${value}.index`);
    fs.writeFileSync(file, root);
    return file;
  };

  for (const [what, at, value] of [
    ['a chunk count of 2^40', 16, 2n ** 40n],
    ['a chunk size of 4 KiB', 24, 4096n],
    ['a chunk size not a power of two', 24, 65537n * 2n],
    ['a device size of 2^50 for the same chunks', 32, 2n ** 50n],
  ] as const) {
    it(`refuses a root with ${what}`, () => {
      const file = tampered(at, value);
      assert.throws(() => readIndexRoot(file), /EIO: index .* does not add up/);
      assert.throws(() => readIndex(t.dir, file), /does not add up/);
    });
  }
});
