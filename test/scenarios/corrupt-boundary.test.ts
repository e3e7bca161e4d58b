// blksnap's "corrupt" and "boundary" test algorithms, through NBD on a running daemon.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { NbdClient } from '../helpers/nbd-client.js';
import { durationMs, random, Scenario } from '../helpers/scenario.js';
import { SECTOR, stampSectors, verifySectors } from '../helpers/sectors.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const CHUNK = 64 * 1024; // chunkMinimumShift 16

describe('corrupt: every sector of the image stays as it was at the take, round after round', () => {
  let s: Scenario;
  before(async () => (s = await Scenario.start([SIZE])));
  after(async () => s?.stop());

  it('fills, takes, writes random ranges and checks the whole image after each round', async (t) => {
    const seed = Date.now() >>> 0;
    const rnd = random(seed);
    const device = await NbdClient.connect(s.daemon.nbdPath, 'dev0');
    const sectors = SIZE / SECTOR;
    for (let off = 0; off < SIZE; off += 4 * MiB) await device.pwrite(off, stampSectors(Buffer.alloc(4 * MiB), off / SECTOR, 0));
    const id = await s.take(['dev0'], { chunkMinimumShift: 16, diffStorageMinimum: 4 * MiB });
    const image = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev0'));
    const deviceSeq = new Uint32Array(sectors); // what the device must hold now
    const deadline = Date.now() + durationMs();
    let round = 0;
    do {
      round++;
      const writes: Array<Promise<void>> = [];
      for (let k = 0; k < 32; k++) {
        const count = 1 + Math.floor(rnd() * 256);
        const first = Math.floor(rnd() * (sectors - count));
        deviceSeq.fill(round, first, first + count);
        writes.push(device.pwrite(first * SECTOR, stampSectors(Buffer.alloc(count * SECTOR), first, round)));
      }
      await Promise.all(writes);
      for (let off = 0; off < SIZE; off += 4 * MiB) {
        const bad = verifySectors(await image.pread(off, 4 * MiB), off / SECTOR, () => 0);
        assert.equal(bad, null, `seed ${seed}, round ${round}, image: ${bad}`);
      }
    } while (Date.now() < deadline);
    for (let off = 0; off < SIZE; off += 4 * MiB) {
      const bad = verifySectors(await device.pread(off, 4 * MiB), off / SECTOR, (sector) => deviceSeq[sector] as number);
      assert.equal(bad, null, `seed ${seed}, device: ${bad}`);
    }
    t.diagnostic(`seed ${seed}: ${round} rounds in ${((Date.now() - deadline + durationMs()) / 1000).toFixed(0)} s, ${round * sectors} image sectors checked, 0 bad`);
    device.close();
    image.close();
    await s.destroy(id);
  });
});

describe('boundary: first and last block of chunks, writes across chunk borders', () => {
  let s: Scenario;
  before(async () => (s = await Scenario.start([4 * MiB])));
  after(async () => s?.stop());

  it('on the device and on the image, neighbours checked', async () => {
    const device = await NbdClient.connect(s.daemon.nbdPath, 'dev0');
    const size = 4 * MiB;
    await device.pwrite(0, stampSectors(Buffer.alloc(size), 0, 0));
    const id = await s.take(['dev0'], { chunkMinimumShift: 16 });
    const image = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev0'));
    const deviceSeq = new Uint32Array(size / SECTOR);
    const imageSeq = new Uint32Array(size / SECTOR);
    let seq = 0;
    // For every chunk border: the last sector before, the first after, and 2 sectors across it.
    const cases: Array<[number, number]> = [];
    for (let border = CHUNK; border < size; border += CHUNK * 5) {
      cases.push([border - SECTOR, 1], [border, 1], [border - SECTOR, 2], [border - 4096, 16]);
    }
    cases.push([0, 1], [size - SECTOR, 1]);
    for (const [offset, sectorCount] of cases) {
      seq++;
      const first = offset / SECTOR;
      await device.pwrite(offset, stampSectors(Buffer.alloc(sectorCount * SECTOR), first, seq));
      deviceSeq.fill(seq, first, first + sectorCount);
      seq++;
      // The image gets a different write at the mirrored border.
      const mirrored = size - offset - sectorCount * SECTOR;
      await image.pwrite(mirrored, stampSectors(Buffer.alloc(sectorCount * SECTOR), mirrored / SECTOR, seq));
      imageSeq.fill(seq, mirrored / SECTOR, mirrored / SECTOR + sectorCount);
    }
    assert.equal(verifySectors(await device.pread(0, size), 0, (x) => deviceSeq[x] as number), null);
    assert.equal(verifySectors(await image.pread(0, size), 0, (x) => imageSeq[x] as number), null);
    device.close();
    image.close();
    await s.destroy(id);
  });
});
