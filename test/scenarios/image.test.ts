// blksnap's snapimage_write and destroy algorithms, and real clients reading images under load.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import * as api from '../../src/control/protocol.js';
import { NbdClient } from '../helpers/nbd-client.js';
import { durationMs, random, Scenario } from '../helpers/scenario.js';
import { SECTOR, stampSectors, verifySectors } from '../helpers/sectors.js';
import { check, missing, run } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;

/** blksnap's snapimage_write: random sector ranges written to the device and the image at once, then both verified. */
async function snapimageWrite(s: Scenario, deviceName: string, io: 'direct' | 'cached'): Promise<void> {
  const device = await NbdClient.connect(s.daemon.nbdPath, deviceName);
  await device.pwrite(0, stampSectors(Buffer.alloc(SIZE), 0, 0));
  const id = await s.take([deviceName], { chunkMinimumShift: 16 });
  const created = s.daemon.log.split('\n').find((line) => line.includes(`snapshot ${id} created`)) ?? '';
  assert.equal(/\(directory, copies by O_DIRECT\)/.test(created), io === 'direct', `the difference storage's I/O: ${created}`);
  const image = await NbdClient.connect(s.daemon.nbdPath, await s.imageName(deviceName));
  const sectors = SIZE / SECTOR;
  const deviceSeq = new Uint32Array(sectors);
  const imageSeq = new Uint32Array(sectors);
  const rnd = random(42);
  const deadline = Date.now() + durationMs();
  let seq = 0;
  do {
    const ops: Array<Promise<void>> = [];
    // Writes in one round never overlap on the same target, so the expected content is known.
    const usedDevice = new Set<number>();
    const usedImage = new Set<number>();
    for (let k = 0; k < 24; k++) {
      const isImage = k % 2 === 1;
      const count = 1 + Math.floor(rnd() * 300);
      const first = Math.floor(rnd() * (sectors - count));
      const block = Math.floor(first / 512);
      const used = isImage ? usedImage : usedDevice;
      if (used.has(block) || used.has(Math.floor((first + count) / 512))) continue;
      used.add(block).add(Math.floor((first + count) / 512));
      seq++;
      (isImage ? imageSeq : deviceSeq).fill(seq, first, first + count);
      const data = stampSectors(Buffer.alloc(count * SECTOR), first, seq);
      ops.push(isImage ? image.pwrite(first * SECTOR, data) : device.pwrite(first * SECTOR, data));
    }
    await Promise.all(ops);
  } while (Date.now() < deadline);
  assert.equal(verifySectors(await device.pread(0, SIZE), 0, (x) => deviceSeq[x] as number), null, 'device');
  assert.equal(verifySectors(await image.pread(0, SIZE), 0, (x) => imageSeq[x] as number), null, 'image');
  device.close();
  image.close();
  await s.destroy(id);
}

describe('snapshot images', () => {
  let s: Scenario;
  before(async () => (s = await Scenario.start([SIZE, SIZE])));
  after(async () => s?.stop());

  it('snapimage_write: image and device written at once, both verified', () => snapimageWrite(s, 'dev0', 'direct'));

  it('destroy with I/O running on device and image: image requests fail cleanly, the device is unharmed', async () => {
    const device = await NbdClient.connect(s.daemon.nbdPath, 'dev1');
    await device.pwrite(0, stampSectors(Buffer.alloc(SIZE), 0, 0));
    const id = await s.take(['dev1'], { chunkMinimumShift: 16 });
    const image = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev1'));
    const deviceSeq = new Uint32Array(SIZE / SECTOR);
    let isRunning = true;
    let imageErrors = 0;
    let imageOk = 0;
    const rnd = random(3);
    let seq = 0;
    const deviceLoop = (async () => {
      while (isRunning) {
        const first = Math.floor(rnd() * (SIZE / SECTOR - 64));
        const n = ++seq;
        deviceSeq.fill(n, first, first + 64);
        await device.pwrite(first * SECTOR, stampSectors(Buffer.alloc(64 * SECTOR), first, n));
      }
    })();
    const imageLoop = (async () => {
      for (;;) {
        try {
          await Promise.all([image.pread(Math.floor(rnd() * 500) * 65536, 65536), image.pwrite(Math.floor(rnd() * 500) * 65536, Buffer.alloc(4096, 9))]);
          imageOk++;
        } catch {
          imageErrors++;
          return;
        }
      }
    })();
    await new Promise((r) => setTimeout(r, Math.min(durationMs(), 1500)));
    await s.destroy(id);
    await imageLoop;
    isRunning = false;
    await deviceLoop;
    assert.ok(imageOk > 0 && imageErrors === 1, `image I/O ran (${imageOk}) and then failed (${imageErrors})`);
    assert.equal(verifySectors(await device.pread(0, SIZE), 0, (x) => deviceSeq[x] as number), null);
    assert.ok(s.daemon.isAlive);
    assert.deepEqual((await s.client.call(api.SnapshotCollect, {})).ids, []);
    // The image export is gone.
    await assert.rejects(NbdClient.connect(s.daemon.nbdPath, 'dev1-image'));
    device.close();
  });

  it('qemu-img compare: the image equals a copy made at take time while the device is written', { skip: missing('qemu-img', 'qemu-io') }, async () => {
    const device = await NbdClient.connect(s.daemon.nbdPath, 'dev0');
    for (let off = 0; off < SIZE; off += 4 * MiB) await device.pwrite(off, stampSectors(Buffer.alloc(4 * MiB), off / SECTOR, 7));
    const copyAtTake = s.path('copy-at-take');
    fs.copyFileSync(s.path('dev0'), copyAtTake); // the daemon has no writes in flight now
    const id = await s.take(['dev0']);
    let isRunning = true;
    const rnd = random(11);
    const load = (async () => {
      while (isRunning) await device.pwrite(Math.floor(rnd() * (SIZE / 4096)) * 4096, Buffer.alloc(4096, 0xee));
    })();
    const uri = s.daemon.uri(await s.imageName('dev0'));
    await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri, copyAtTake]);
    const copied = s.path('nbdcopy-of-image');
    await check('nbdcopy', [uri, copied]);
    isRunning = false;
    await load;
    assert.ok(fs.readFileSync(copied).equals(fs.readFileSync(copyAtTake)), 'nbdcopy of the image under load');
    const differs = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.daemon.uri('dev0'), copyAtTake]);
    assert.equal(differs.code, 1, 'the device itself did change');
    device.close();
    await s.destroy(id);
  });
});

describe('snapshot images with copy-on-write copies through the page cache (--cow-copy cached)', () => {
  let s: Scenario;
  before(async () => (s = await Scenario.start([SIZE], ['--cow-copy', 'cached'])));
  after(async () => s?.stop());

  it('snapimage_write', () => snapimageWrite(s, 'dev0', 'cached'));
});
