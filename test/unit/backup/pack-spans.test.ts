// Records read together: one span only for records that follow one another in one pack. Packs in a
// bucket have no local file, so two packs whose records happen to sit at adjoining offsets must still
// be two spans (a restore from a bucket read one pack's bytes for another's record, and failed).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { spansOf } from '../../../src/backup/workers/pack-reads.js';
import type { LoadItem } from '../../../src/repository/chunk-index.js';
import { RECORD_HEADER } from '../../../src/repository/pack.js';

function item(pack: string, offset: number, storedLength: number, file: string | null): LoadItem {
  return { where: { pack, name: `chunks/${pack}.pack`, file, offset, storedLength, flags: 0, size: storedLength }, digest: new Uint8Array(32), offset: 0, length: storedLength };
}

describe('pack spans', () => {
  it('records adjoining in one pack are one span; in two packs, two, with or without local files', () => {
    for (const file of [null, 'local']) {
      const at = (pack: string): string | null => (file === null ? null : `/repo/chunks/${pack}.pack`);
      const items = [item('a', 0, 100, at('a')), item('a', RECORD_HEADER + 100, 50, at('a')), item('b', 2 * RECORD_HEADER + 150, 70, at('b'))];
      assert.deepEqual(
        spansOf(items).map((s) => [s.first, s.end, s.offset, s.bytes]),
        [
          [0, 2, 0, 2 * RECORD_HEADER + 150],
          [2, 3, 2 * RECORD_HEADER + 150, RECORD_HEADER + 70],
        ],
        `packs ${file === null ? 'in a bucket' : 'in a directory'}`,
      );
    }
  });
});
