// A device's digest index (root and pages): read back as written, and a root whose numbers do not add
// up (its checksum recomputed, as a careless or hostile writer would) refused before anything is sized by them.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { PLAIN } from '../../../src/repository/cipher.js';
import { LocalBackend } from '../../../src/repository/local-backend.js';
import { sha256 } from '../../../src/repository/digest.js';
import { chunkCountOf, readIndex, readIndexRoot, writeIndex } from '../../../src/repository/digest-index.js';
import { tempDir } from '../../helpers/tools.js';

describe('digest index', () => {
  const t = tempDir('blksnap-digest-index-');
  after(() => t.remove());
  const size = 1300 * 65536 + 4096; // 1301 chunks: three pages, the last one short
  const digests = randomBytes(chunkCountOf(size, 65536) * 32);
  const backend = new LocalBackend(t.dir);
  const rootFile = path.join(t.dir, 'disk.index');

  it('reads back what was written', async () => {
    const { root } = await writeIndex(backend, PLAIN, { size, chunkSize: 65536, digests });
    fs.writeFileSync(rootFile, root);
    const index = await readIndex(backend, 'disk.index', PLAIN);
    assert.equal(index.size, size);
    assert.equal(index.chunkSize, 65536);
    assert.ok(index.digests.equals(digests));
  });

  /** The root with a u64 field changed and its checksum made right again. */
  const tampered = (at: number, value: bigint): string => {
    const root = fs.readFileSync(rootFile);
    root.writeBigUInt64LE(value, at);
    sha256(root.subarray(0, root.length - 32)).copy(root, root.length - 32);
    const file = `tampered-${at}-${value}.index`;
    fs.writeFileSync(path.join(t.dir, file), root);
    return file;
  };

  for (const [what, at, value] of [
    ['a chunk count of 2^40', 16, 2n ** 40n],
    ['a chunk size of 4 KiB', 24, 4096n],
    ['a chunk size not a power of two', 24, 65537n * 2n],
    ['a device size of 2^50 for the same chunks', 32, 2n ** 50n],
  ] as const) {
    it(`refuses a root with ${what}`, async () => {
      const file = tampered(at, value);
      await assert.rejects(readIndexRoot(backend, file, PLAIN), /index .* does not add up/);
      await assert.rejects(readIndex(backend, file, PLAIN), /does not add up/);
    });
  }
});
