// State files for durable CBT: atomic writes, and anything damaged refused with a reason, never misread.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { CbtMap } from '../../../src/cbt/cbt-map.js';
import { readStateFile, writeStateFile } from '../../../src/os/state-file.js';
import { tempDir } from '../../helpers/tools.js';

describe('state files', () => {
  it('round trip; a truncated, extended, flipped, foreign or missing file is refused with its reason', async () => {
    const { dir, remove } = tempDir();
    try {
      const file = path.join(dir, 'state');
      const payload = Buffer.from('the tracker of dev0, and more bytes');
      await writeStateFile(file, 7, 1, payload);
      assert.deepEqual(await readStateFile(file, 7, 1), { ok: true, payload, version: 1 });
      assert.deepEqual(await readStateFile(file, 7, [2, 1]), { ok: true, payload, version: 1 }, 'an older format a reader still takes');
      assert.deepEqual(fs.readdirSync(dir), ['state'], 'no temp file left behind');
      const whole = fs.readFileSync(file);
      const cases: Array<[string, Buffer, RegExp]> = [
        ['truncated', whole.subarray(0, whole.length - 3), /truncated/],
        ['extended', Buffer.concat([whole, Buffer.from('x')]), /truncated or extended/],
        ['flipped', Buffer.from(whole.map((b, i) => (i === whole.length - 5 ? b ^ 0x10 : b))), /checksum/],
        ['not ours', Buffer.from('hello world, this is not a state file at all, no.............'), /not a blksnap state file/],
      ];
      for (const [what, bytes, reason] of cases) {
        fs.writeFileSync(file, bytes);
        const r = await readStateFile(file, 7, 1);
        assert.equal(r.ok, false, what);
        if (!r.ok) assert.match(r.reason, reason, what);
      }
      await writeStateFile(file, 7, 1, payload);
      assert.match((await readStateFile(file, 7, 2) as { reason: string }).reason, /format version 1, not 2/);
      assert.match((await readStateFile(file, 7, [3, 2]) as { reason: string }).reason, /format version 1, not 3 or 2/);
      assert.match((await readStateFile(file, 8, 1) as { reason: string }).reason, /another kind/);
      assert.match((await readStateFile(path.join(dir, 'none'), 7, 1) as { reason: string }).reason, /ENOENT/);
    } finally {
      remove();
    }
  });

  it('a CBT map comes back exactly from its bytes, across switches and a wrap; bad bytes are refused', () => {
    const map = new CbtMap(40 * 65536 + 7);
    map.mark(0, 1);
    map.switch();
    map.mark(5 * 65536, 3 * 65536);
    map.markBoth(39 * 65536, 100);
    for (let i = 0; i < 300; i++) map.switch(); // wraps past 255: a new generation on the way
    map.mark(20 * 65536, 1);
    const back = CbtMap.deserialize(map.serialize());
    assert.equal(back.capacity, map.capacity);
    assert.equal(back.generationId, map.generationId);
    assert.equal(back.previousNumber, map.previousNumber);
    assert.equal(back.activeNumber, map.activeNumber);
    assert.deepEqual(back.activeMapCopy(), map.activeMapCopy());
    assert.deepEqual(back.readMap(0, back.blockCount), map.readMap(0, map.blockCount));
    const bytes = map.serialize();
    assert.throws(() => CbtMap.deserialize(bytes.subarray(0, bytes.length - 1)), { code: 'EINVAL' });
    const badNumbers = Buffer.from(bytes);
    badNumbers[9] = 0;
    assert.throws(() => CbtMap.deserialize(badNumbers), { code: 'EINVAL' });
  });
});
