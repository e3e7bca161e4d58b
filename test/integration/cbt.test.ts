// Change tracking through the real I/O path: NBD writes, a switch, readcbtmap.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { check, missing, sparseFile, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const BLOCK = 65536;

describe('CBT through the NBD path', { skip: missing('qemu-io') }, () => {
  let daemon: TestDaemon;
  let tmp: { dir: string; remove: () => void };

  before(async () => {
    tmp = tempDir();
    sparseFile(path.join(tmp.dir, 'disk'), 64 * MiB + 4096);
    daemon = await TestDaemon.start(['--attach', path.join(tmp.dir, 'disk')]);
  });
  after(async () => {
    await daemon?.stop();
    tmp?.remove();
  });

  async function readMap(): Promise<number[]> {
    const file = path.join(tmp.dir, 'map');
    const r = await daemon.json<{ blockCount: number }>('readcbtmap', '--device', 'disk', '--file', file);
    const map = [...fs.readFileSync(file)];
    assert.equal(map.length, r.blockCount);
    return map;
  }

  const changed = (map: number[], since: number): number[] => map.flatMap((v, i) => (v > since ? [i] : []));

  it('readcbtmap shows exactly the written blocks with the right numbers', async () => {
    const info = await daemon.json<{ blockSize: number; blockCount: number; changesNumber: number; deviceCapacity: number }>('cbtinfo', '--device', 'disk');
    assert.deepEqual([info.blockSize, info.blockCount, info.changesNumber, info.deviceCapacity], [BLOCK, 1025, 0, 64 * MiB + 4096]);

    // Epoch 1: writes through NBD, straddling a block boundary, plus the last partial block.
    await check('qemu-io', ['-f', 'raw', '-c', `write -P 1 ${3 * BLOCK - 10} 20`, '-c', `write -P 1 ${64 * MiB} 4096`, daemon.uri('disk')]);
    assert.deepEqual(await readMap(), new Array(1025).fill(0), 'nothing is published before the switch');
    const unchanged = await daemon.json<{ changesNumber: number }>('cbtinfo', '--device', 'disk');
    assert.equal(unchanged.changesNumber, 0);
  });

  it('three increments: each switch publishes exactly that epoch\'s blocks', async () => {
    const { Cbt, BlksnapClient } = await import('../../src/index.js');
    const client = await BlksnapClient.connect(daemon.controlPath);
    try {
      const cbt = new Cbt(client, 'disk');
      const generation = (await cbt.info()).generationId;
      let info = await cbt.switch(); // publishes epoch 1 (the previous test's writes)
      assert.equal(info.changesNumber, 1);
      assert.deepEqual(changed(await readMap(), 0), [2, 3, 1024]);

      await check('qemu-io', ['-f', 'raw', '-c', `write -P 2 ${10 * BLOCK} ${3 * BLOCK}`, '-c', `write -z ${40 * BLOCK} 1`, daemon.uri('disk')]);
      info = await cbt.switch();
      assert.equal(info.changesNumber, 2);
      let map = await readMap();
      assert.deepEqual(changed(map, 1), [10, 11, 12, 40], 'changed since backup 1');
      assert.deepEqual(changed(map, 0), [2, 3, 10, 11, 12, 40, 1024], 'changed since the start');

      await check('qemu-io', ['-f', 'raw', '-c', `discard ${2 * BLOCK} ${BLOCK}`, '-c', `write -P 3 ${11 * BLOCK + 1} 1`, daemon.uri('disk')]);
      await cbt.markDirty([{ sector: (500 * BLOCK) / 512, count: 1 }]);
      info = await cbt.switch();
      assert.equal(info.changesNumber, 3);
      map = await readMap();
      assert.deepEqual(changed(map, 2), [2, 11, 500]);
      assert.equal(map[500], 3);
      assert.equal(map[10], 2);
      assert.equal(info.generationId, generation);
    } finally {
      await client.close();
    }
  });

  it('markdirtyblock marks both maps: visible at once in the read map', async () => {
    const before = await daemon.json<{ changesNumber: number }>('cbtinfo', '--device', 'disk');
    const r = await daemon.cli('markdirtyblock', '--device', 'disk', '--range', `${(700 * BLOCK) / 512}:1`, `${(800 * BLOCK) / 512}:${(2 * BLOCK) / 512}`);
    assert.equal(r.code, 0, r.stderr);
    const map = await readMap();
    assert.equal(map[700], before.changesNumber);
    assert.deepEqual([map[800], map[801], map[802]], [before.changesNumber, before.changesNumber, 0]);
  });

  it('wrap after 255 switches gives a new generation', async () => {
    const { Cbt, BlksnapClient } = await import('../../src/index.js');
    const client = await BlksnapClient.connect(daemon.controlPath);
    try {
      const cbt = new Cbt(client, 'disk');
      const start = await cbt.info();
      let info = start;
      // The 255th switch of a generation is the one that wraps: previous becomes 255, active 1.
      while (info.changesNumber < 254) info = await cbt.switch();
      assert.equal(info.generationId, start.generationId);
      info = await cbt.switch();
      assert.equal(info.changesNumber, 255);
      assert.notEqual(info.generationId, start.generationId);
      info = await cbt.switch();
      assert.equal(info.changesNumber, 1);
      assert.deepEqual(changed(await readMap(), 0), [], 'the new generation starts from zeroed maps');
    } finally {
      await client.close();
    }
  });
});
