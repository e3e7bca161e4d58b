// The write-intent record on disk (daemon/intent-files.ts): slots written in turn, the newest whole one
// read back; a torn or flipped slot falls back to the other; both bad is a reason, never a guess.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { IntentFiles, readIntent } from '../../../src/cbt/intent-files.js';
import { tempDir } from '../../helpers/tools.js';

const regions = (...set: number[]): Uint8Array => {
  const r = new Uint8Array(20);
  for (const i of set) r[i] = 1;
  return r;
};

describe('intent files', () => {
  it('reads the newest whole slot; a damaged newest slot gives the one before; both damaged give a reason', async () => {
    const { dir, remove } = tempDir('intent-');
    try {
      assert.equal(await readIntent(dir, 'd'), null, 'no record at all');
      let files = await IntentFiles.open(dir, 'd');
      await files.write(regions(1), 4096);
      await files.write(regions(1, 7, 19), 4096);
      await files.close();
      let read = await readIntent(dir, 'd');
      assert.ok(read && 'regions' in read);
      assert.deepEqual([read.sequence, read.regionSize, [...read.regions].flatMap((v, i) => (v ? [i] : []))], [2, 4096, [1, 7, 19]]);

      // The sequence goes on from what is on disk, so a reopened record never writes an older number.
      files = await IntentFiles.open(dir, 'd');
      await files.write(regions(3), 8192);
      await files.close();
      read = await readIntent(dir, 'd');
      assert.ok(read && 'regions' in read);
      assert.deepEqual([read.sequence, read.regionSize, read.regions[3]], [3, 8192, 1]);

      // Slot b holds sequence 3 now (odd sequences go to b): tear it, then flip a byte of a.
      const a = path.join(dir, 'd.intent-a');
      const b = path.join(dir, 'd.intent-b');
      fs.truncateSync(b, 50);
      read = await readIntent(dir, 'd');
      assert.ok(read && 'regions' in read);
      assert.equal(read.sequence, 2, 'the torn slot is passed over');
      const bytes = fs.readFileSync(a);
      bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0x10;
      fs.writeFileSync(a, bytes);
      const none = await readIntent(dir, 'd');
      assert.ok(none && 'reason' in none);
      assert.match(none.reason, /intent-a fails its checksum.*intent-b/);

      await IntentFiles.remove(dir, 'd');
      assert.equal(await readIntent(dir, 'd'), null);
    } finally {
      remove();
    }
  });
});
