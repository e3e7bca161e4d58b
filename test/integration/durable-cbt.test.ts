// Tracking across restarts: devices come back from --state-dir; after a clean stop the
// tracker is the same (generation, numbers, both maps); after a crash it is recovered (same generation
// and numbers, the crash's writes marked), and the take's switch survives a crash right after it; a
// damaged state file or write-intent record, or a store changed while down, gives a new generation
// and cbtinfo says why. (crash-cbt.test.ts kills a daemon under write load.)
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
  // The active map, read over NBD as x-blksnap:cbt.
  const active = await check('nbdinfo', ['--map=x-blksnap:cbt', '--json', daemon.uri(device)]);
  return { read, active };
}

type Extent = { offset: number; length: number; type: number };

function extents(nbdinfoJson: string): Extent[] {
  return JSON.parse(nbdinfoJson) as Extent[];
}

/** The CBT byte x-blksnap:cbt gives for the block at `offset`. */
function byteAt(map: Extent[], offset: number): number | undefined {
  return map.find((e) => e.offset <= offset && offset < e.offset + e.length)?.type;
}

describe('durable CBT: restarts', { skip: missing('qemu-io', 'nbdinfo') }, () => {
  it('a clean stop restores the tracker, a crash recovers it, damage and a changed store give a new generation with the reason', async () => {
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

      // A crash: the write-intent record brings the same generation and numbers back, the write marked.
      await write('9M');
      await daemon.kill();
      daemon = await TestDaemon.startIn(dir, remove);
      let info = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      assert.deepEqual([info.generationId, info.changesNumber, info.origin], [before.generationId, before.changesNumber, 'recovered']);
      assert.match(info.originReason ?? '', /did not stop cleanly: 1 write-intent region \(4 MiB\) marked/);
      const recovered = extents((await maps(daemon, 'disk.img')).active);
      assert.equal(byteAt(recovered, 9 * MiB), before.changesNumber + 1, 'the write of the crash is marked with the active number');
      assert.equal(byteAt(recovered, 5 * MiB), byteAt(extents(beforeMaps.active), 5 * MiB), 'the saved marks are kept');

      // The take's switch is durable before snapshot_take answers: a crash right after keeps it.
      const taken = await daemon.json<{ id: string }>('snapshot_create', '--device', 'disk.img', '--file', dir, '--limit', '64M');
      await daemon.json('snapshot_take', '--id', taken.id);
      await daemon.kill();
      daemon = await TestDaemon.startIn(dir, remove);
      info = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      assert.deepEqual([info.generationId, info.changesNumber, info.origin], [before.generationId, before.changesNumber + 1, 'recovered']);
      assert.match(info.originReason ?? '', /0 write-intent regions/, 'no write since the take: nothing extra marked');

      // A crash whose write-intent record is damaged in both slots: nobody knows what was written.
      await write('13M');
      await daemon.kill();
      for (const slot of ['a', 'b']) {
        const file = path.join(dir, 'cbt', `disk.img.intent-${slot}`);
        const record = fs.readFileSync(file);
        record[20] = (record[20] as number) ^ 0x01;
        fs.writeFileSync(file, record);
      }
      daemon = await TestDaemon.startIn(dir, remove);
      info = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      assert.equal(info.origin, 'new');
      assert.notEqual(info.generationId, before.generationId, 'never a map that may miss a write');
      assert.match(info.originReason ?? '', /write-intent record is unusable .*checksum/);

      // A state file cut short.
      await daemon.stop({ keep: true });
      const cut = path.join(dir, 'cbt', 'disk.img.state');
      fs.truncateSync(cut, fs.statSync(cut).size - 100);
      daemon = await TestDaemon.startIn(dir, remove);
      info = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      assert.equal(info.origin, 'new');
      assert.match(info.originReason ?? '', /truncated/);

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
