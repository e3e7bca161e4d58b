// Chunks of a restore that hold the same content: grouped by digest (each group's first chunk loaded,
// the others written from it), never zero chunks, never a short last chunk with full ones, and no
// group of more than the cap of copies.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { repeatedChunks } from '../../../src/backup/repeated-chunks.js';

/** A device index from a list of content names (0: a chunk of zeros). */
function digestsOf(contents: number[]): Uint8Array {
  const names = new Map<number, Buffer>();
  const out = new Uint8Array(contents.length * 32);
  contents.forEach((name, c) => {
    if (name === 0) return;
    if (!names.has(name)) names.set(name, randomBytes(32));
    out.set(names.get(name) as Buffer, c * 32);
  });
  return out;
}

describe('repeated chunks', () => {
  it('loads each content once and writes it at every later place, in order', () => {
    const contents = [1, 2, 1, 0, 3, 2, 1, 0, 4];
    const r = repeatedChunks(contents.map((_, c) => c), digestsOf(contents), () => 4096);
    assert.deepEqual(r.firsts, [0, 1, 3, 4, 7, 8]);
    assert.deepEqual(r.copiesOf(0), [2, 6]);
    assert.deepEqual(r.copiesOf(1), [5]);
    assert.deepEqual(r.copiesOf(4), []);
    assert.deepEqual(r.copiesOf(3), [], 'a chunk of zeros is never grouped');
    assert.deepEqual(r.copiesOf(2), [], 'a later chunk has no copies of its own');
  });

  it('groups only among the chunks given (a rollback writes no chunk it was not asked to)', () => {
    const contents = [5, 5, 5, 5, 5, 5];
    const r = repeatedChunks([1, 4, 5], digestsOf(contents), () => 4096);
    assert.deepEqual(r.firsts, [1]);
    assert.deepEqual(r.copiesOf(1), [4, 5]);
  });

  it('keeps a short last chunk apart from full ones of the same digest', () => {
    const contents = [7, 7, 7];
    const r = repeatedChunks([0, 1, 2], digestsOf(contents), (c) => (c === 2 ? 512 : 4096));
    assert.deepEqual(r.firsts, [0, 2]);
    assert.deepEqual(r.copiesOf(0), [1]);
  });

  it('starts a new group once one holds the cap of copies', () => {
    const contents = Array.from({ length: 40 }, () => 9);
    const r = repeatedChunks(contents.map((_, c) => c), digestsOf(contents), () => 4096, 15);
    assert.deepEqual(r.firsts, [0, 16, 32]);
    assert.deepEqual(r.copiesOf(0), Array.from({ length: 15 }, (_, i) => 1 + i));
    assert.deepEqual(r.copiesOf(32), Array.from({ length: 7 }, (_, i) => 33 + i));
  });

  it('finds every repeat among many distinct contents (probing past collisions)', () => {
    // 5000 contents, each at two places; digests that share their first four bytes collide in the table.
    const n = 5000;
    const digests = new Uint8Array(2 * n * 32);
    for (let k = 0; k < n; k++) {
      const d = randomBytes(32);
      d.writeUInt32LE(k % 7, 0);
      digests.set(d, k * 32);
      digests.set(d, (n + k) * 32);
    }
    const r = repeatedChunks(Array.from({ length: 2 * n }, (_, c) => c), digests, () => 4096);
    assert.equal(r.firsts.length, n);
    for (let k = 0; k < n; k += 97) assert.deepEqual(r.copiesOf(k), [n + k]);
  });
});
