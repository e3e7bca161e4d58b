// Tracker state files: the map saved compressed (a take waits for its fsync), read back exactly, and
// the files older daemons wrote (the raw map) still read.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { CbtMap } from '../../../src/cbt/cbt-map.js';
import { TrackerFiles } from '../../../src/cbt/tracker-file.js';
import { writeStateFile } from '../../../src/os/state-file.js';
import { tempDir } from '../../helpers/tools.js';

const TiB = 2 ** 40;

function sameMaps(a: CbtMap, b: CbtMap): void {
  assert.deepEqual([a.capacity, a.generationId, a.previousNumber, a.activeNumber], [b.capacity, b.generationId, b.previousNumber, b.activeNumber]);
  assert.ok(Buffer.from(a.activeMapCopy()).equals(Buffer.from(b.activeMapCopy())), 'the active map');
  assert.ok(Buffer.from(a.readMap(0, a.blockCount)).equals(Buffer.from(b.readMap(0, b.blockCount))), 'the read map');
}

/** A sparse store of `size` bytes in `dir`, for a state file to describe. */
function sparseStore(dir: string, size: number): string {
  const store = path.join(dir, 'store');
  fs.writeFileSync(store, '');
  fs.truncateSync(store, size);
  return store;
}

/** Saves `map` as device `name`, loads it back, and checks it came back exactly; the file's size on disk. */
async function roundTrip(state: TrackerFiles, name: string, store: string, map: CbtMap, clean: boolean): Promise<number> {
  await state.save(name, store, map.serialize(), clean);
  const back = await state.load(name);
  assert.ok('map' in back, 'reason' in back ? back.reason : '');
  assert.equal(back.header.clean, clean);
  sameMaps(back.map, map);
  return fs.statSync(path.join(state.dir, `${name}.state`)).size;
}

describe('tracker state files', () => {
  it('a 1 TiB map is saved in a few KiB and comes back exactly, marks and numbers included', async () => {
    const { dir, remove } = tempDir();
    try {
      const store = sparseStore(dir, TiB);
      const map = new CbtMap(TiB);
      map.mark(0, 1);
      map.switch();
      map.mark(TiB / 2, 3 * 2 ** 20);
      map.markBoth(TiB - 100, 100);
      // The raw bytes are 2 × 2 MiB of maps; the take waits for this file's fsync.
      const bytes = await roundTrip(new TrackerFiles(dir), 'big', store, map, false);
      assert.ok(bytes < 4096, `${bytes} bytes on disk`);
    } finally {
      remove();
    }
  });

  it('a map of scattered marks comes back exactly', async () => {
    const { dir, remove } = tempDir();
    try {
      const store = sparseStore(dir, 2 ** 30);
      const map = new CbtMap(2 ** 30);
      for (let n = 0; n < 40; n++) {
        for (let i = 0; i < 500; i++) {
          const at = Math.floor(Math.random() * (2 ** 30 - 2 ** 18));
          map.mark(at, 1 + Math.floor(Math.random() * 2 ** 18));
        }
        map.switch();
      }
      await roundTrip(new TrackerFiles(dir), 'scattered', store, map, true);
    } finally {
      remove();
    }
  });

  it('a file of the first format (the map as it is) still loads; a compressed map that does not decode is refused', async () => {
    const { dir, remove } = tempDir();
    try {
      const store = path.join(dir, 'store');
      fs.writeFileSync(store, Buffer.alloc(65536 * 10));
      const map = new CbtMap(65536 * 10);
      map.mark(65536 * 3, 1);
      map.switch();
      const state = new TrackerFiles(dir);
      const header = { clean: true, size: 65536 * 10, mtimeMs: 1, ctimeMs: 1, isBlockDevice: false, savedAtMs: 1 };
      const json = Buffer.from(JSON.stringify(header));
      const length = Buffer.alloc(4);
      length.writeUInt32LE(json.length);
      fs.mkdirSync(state.dir, { recursive: true });
      const file = path.join(state.dir, 'old.state');
      await writeStateFile(file, 2, 1, Buffer.concat([length, json, map.serialize()]));
      const old = await state.load('old');
      assert.ok('map' in old, 'reason' in old ? old.reason : '');
      assert.deepEqual(old.header, header);
      sameMaps(old.map, map);

      // Whole and checksummed, yet the frame is not zstd: refused with the reason, never misread.
      const mapLength = Buffer.alloc(8);
      mapLength.writeBigUInt64LE(BigInt(map.serialize().length));
      await writeStateFile(file, 2, 2, Buffer.concat([length, json, mapLength, Buffer.from('not a zstd frame')]));
      const bad = await state.load('old');
      assert.ok('reason' in bad);
      assert.match(bad.reason, /saved tracker refused: zstd decompress/);
    } finally {
      remove();
    }
  });
});
