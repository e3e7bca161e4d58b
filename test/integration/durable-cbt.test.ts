// Tracking across restarts (SPEC §8, first part): devices come back from --state-dir; after a clean
// stop the tracker is the same (generation, numbers, both maps); after a crash, a damaged state file
// or a store changed while down, the generation is new and cbtinfo says why. (Crash recovery with a
// write-intent record, which keeps the generation across a kill -9, is still to come.)
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { check, missing, sparseFile, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;

type CbtInfo = { generationId: string; changesNumber: number; origin: string; originReason?: string };

async function maps(daemon: TestDaemon, device: string): Promise<{ read: Buffer; active: string }> {
  const file = path.join(daemon.dir, `map-${Date.now()}`);
  await daemon.json('readcbtmap', '--device', device, '--file', file);
  const read = fs.readFileSync(file);
  fs.rmSync(file);
  // The active map, read over NBD as x-blksnap:cbt (SPEC §8).
  const active = await check('nbdinfo', ['--map=x-blksnap:cbt', '--json', daemon.uri(device)]);
  return { read, active };
}

describe('durable CBT: restarts', { skip: missing('qemu-io', 'nbdinfo') }, () => {
  it('a clean stop brings the device back with the same tracker; crash, damage and a changed store give a new generation with the reason', async () => {
    const { dir, remove } = tempDir('blksnapd-durable-');
    const store = sparseFile(path.join(dir, 'disk.img'), 16 * MiB);
    let daemon = await TestDaemon.startIn(dir, remove, ['--attach', store]);
    try {
      const write = (at: string) => check('qemu-io', ['-f', 'raw', '-c', `write ${at} 64k`, daemon.uri('disk.img')]);
      await write('1M');
      const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'disk.img', '--file', dir, '--limit', '64M');
      await daemon.json('snapshot_take', '--id', id);
      await daemon.json('snapshot_destroy', '--id', id);
      await write('5M');
      const before = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      const beforeMaps = await maps(daemon, 'disk.img');

      // Clean stop, restart without --attach: all of it back.
      await daemon.stop({ keep: true });
      daemon = await TestDaemon.startIn(dir, remove);
      assert.deepEqual((await daemon.json<{ devices: Array<{ name: string }> }>('list')).devices.map((d) => d.name), ['disk.img']);
      const after = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      assert.deepEqual([after.generationId, after.changesNumber, after.origin], [before.generationId, before.changesNumber, 'restored']);
      const afterMaps = await maps(daemon, 'disk.img');
      assert.ok(afterMaps.read.equals(beforeMaps.read), 'the read map is the same');
      assert.equal(afterMaps.active, beforeMaps.active, 'the active map is the same');

      // A crash: the tracker saved at start says "running", so the next start knows.
      await write('9M');
      await daemon.kill();
      daemon = await TestDaemon.startIn(dir, remove);
      let info = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      assert.notEqual(info.generationId, before.generationId, 'never a stale map after a crash');
      assert.equal(info.origin, 'new');
      assert.match(info.originReason ?? '', /did not stop cleanly/);

      // A damaged tracker state file.
      await daemon.stop({ keep: true });
      const stateFile = path.join(dir, 'cbt', 'disk.img.state');
      const bytes = fs.readFileSync(stateFile);
      bytes[bytes.length - 10] = (bytes[bytes.length - 10] as number) ^ 0xff;
      fs.writeFileSync(stateFile, bytes);
      daemon = await TestDaemon.startIn(dir, remove);
      info = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      assert.equal(info.origin, 'new');
      assert.match(info.originReason ?? '', /checksum/);

      // The store written while the daemon was down.
      const kept = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      await daemon.stop({ keep: true });
      const fd = fs.openSync(store, 'r+');
      fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 3 * MiB);
      fs.closeSync(fd);
      daemon = await TestDaemon.startIn(dir, remove);
      info = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      assert.notEqual(info.generationId, kept.generationId);
      assert.match(info.originReason ?? '', /modified while not attached/);

      // A store that is gone: logged, left out; detach ends it for good.
      await daemon.stop({ keep: true });
      fs.renameSync(store, `${store}.away`);
      daemon = await TestDaemon.startIn(dir, remove);
      assert.deepEqual((await daemon.json<{ devices: unknown[] }>('list')).devices, []);
      assert.match(daemon.log, /not attaching disk.img again: its store .* is gone/);
    } finally {
      await daemon.stop();
    }
  });
});
