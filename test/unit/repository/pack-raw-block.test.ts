// A chunk zstd cannot shrink is stored as it is: PackWriter lets zstd's raw block land where the
// record's data goes instead of copying the chunk. Whatever the chunk's size, the record must hold
// exactly the chunk (or its frame, when smaller), and a frame that is not one raw block of the
// expected layout must never pass for one.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { after, describe, it } from 'node:test';
import { sha256 } from '../../../src/repository/digest.js';
import { PLAIN } from '../../../src/repository/cipher.js';
import { LocalBackend } from '../../../src/repository/local-backend.js';
import { decodeIdx, decodeRecord, entriesOf, FLAG_ZSTD, isRawBlockFrame, PackWriter, RECORD_HEADER, rawBlockLead } from '../../../src/repository/pack.js';
import { zstdBound, zstdCompressInto } from '../../../src/os/zstd.js';
import { tempDir } from '../../helpers/tools.js';

describe('pack records of chunks zstd cannot shrink', () => {
  const t = tempDir();
  after(() => t.remove());

  it('libzstd writes a random chunk as one raw block of the expected layout, for every content size field', () => {
    for (const size of [4096, 65536, 65536 + 256, 128 * 1024]) {
      const data = randomBytes(size);
      const out = Buffer.alloc(zstdBound(size));
      const n = zstdCompressInto(data, 2, out);
      assert.ok(isRawBlockFrame(out, 0, n, size), `a ${size}-byte random chunk is one raw block`);
      assert.ok(out.subarray(rawBlockLead(size), n).equals(data), 'its content follows the lead verbatim');
    }
    assert.equal(rawBlockLead(128 * 1024 + 4096), 0, 'a chunk of more than one block has no lead');
  });

  it('takes no frame that differs from that layout in any byte of its lead, nor one of another length', () => {
    const size = 65536;
    const data = randomBytes(size);
    const out = Buffer.alloc(zstdBound(size));
    const n = zstdCompressInto(data, 2, out);
    const lead = rawBlockLead(size);
    for (let i = 0; i < lead; i++) {
      const bent = Buffer.from(out.subarray(0, n));
      bent[i] = (bent[i] as number) ^ 0x01;
      assert.equal(isRawBlockFrame(bent, 0, n, size), false, `byte ${i} of the lead changed`);
    }
    assert.equal(isRawBlockFrame(out, 0, n - 1, size), false);
    const text = Buffer.alloc(size, 'compressible text ');
    const m = zstdCompressInto(text, 2, out);
    assert.equal(isRawBlockFrame(out, 0, m, size), false, 'a compressed frame');
  });

  it('stores random chunks as they are and compressible ones compressed, at every size, each decoding to its chunk', async () => {
    const backend = new LocalBackend(t.dir);
    const writer = new PackWriter(backend, PLAIN, 2);
    // Which is which, as made: a random chunk may begin with any byte (one starting with 't' was once
    // taken for text by its first byte, 1 run in ~50).
    const chunks: Array<{ c: Buffer; isRandom: boolean }> = [];
    for (const size of [512, 4096, 65536, 128 * 1024, 256 * 1024]) {
      chunks.push({ c: randomBytes(size), isRandom: true }, { c: Buffer.alloc(size, `text of ${size} bytes `), isRandom: false });
    }
    for (const { c } of chunks) writer.append(sha256(c), c);
    await writer.close();
    const id = writer.closed[0] as string;
    const bytes = fs.readFileSync(backend.localPath(`chunks/${id}.pack`));
    const idx = backend.localPath(`chunks/${id}.idx`);
    const entries = entriesOf(decodeIdx(fs.readFileSync(idx), idx));
    for (const { c, isRandom } of chunks) {
      const e = entries.find((x) => x.digest.equals(sha256(c)));
      assert.ok(e);
      const stored = bytes.subarray(e.offset + RECORD_HEADER, e.offset + RECORD_HEADER + e.storedLength);
      assert.equal(e.flags, isRandom ? 0 : FLAG_ZSTD, `flags of a ${c.length}-byte ${isRandom ? 'random' : 'text'} chunk`);
      if (isRandom) assert.ok(stored.equals(c), `a ${c.length}-byte random chunk is stored verbatim`);
      assert.equal(decodeRecord(stored, e.flags, e.digest, new Uint8Array(c.length), PLAIN), null);
    }
  });
});
