// blksnap's diff_storage, stretch and overflow algorithms: where originals go, how the store grows, what a full one does.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import * as api from '../../src/control/protocol.js';
import { NbdClient, NbdError } from '../helpers/nbd-client.js';
import { durationMs, random, Scenario } from '../helpers/scenario.js';
import { SECTOR, stampSectors, verifySectors } from '../helpers/sectors.js';
import { check, missing, run } from '../helpers/tools.js';

const MiB = 1024 * 1024;

describe('diff_storage: devices and difference storage interleaved on one block device', { skip: missing('losetup') }, () => {
  let s: Scenario;
  const loops: string[] = [];
  before(async () => (s = await Scenario.start([])));
  after(async () => {
    await s?.stop();
    for (const l of loops) await run('losetup', ['-d', l]);
  });

  it('writes nothing outside each region; images and devices are right', async () => {
    // One backing file, six 8 MiB regions: device A, storage, device B, guard, storage tail is unused.
    const R = 8 * MiB;
    const backing = s.path('shared-disk');
    const whole = Buffer.alloc(5 * R);
    for (let r = 0; r < 5; r++) stampSectors(whole.subarray(r * R, (r + 1) * R), (r * R) / SECTOR, 100 + r);
    fs.writeFileSync(backing, whole);
    const region = async (r: number, count = 1): Promise<string> => {
      const dev = (await check('losetup', ['-f', '--show', '--offset', String(r * R), '--sizelimit', String(count * R), backing])).trim();
      loops.push(dev);
      return dev;
    };
    const devA = await region(0);
    const store = await region(1, 2); // regions 1 and 2: the difference storage
    const devB = await region(3);
    await s.daemon.json('attach', '--device', devA, '--name', 'A');
    await s.daemon.json('attach', '--device', devB, '--name', 'B');
    const id = await s.take(['A', 'B'], { diffStorage: store, limit: 16 * MiB, chunkMinimumShift: 16 });
    const a = await NbdClient.connect(s.daemon.nbdPath, 'A');
    const b = await NbdClient.connect(s.daemon.nbdPath, 'B');
    // Rewrite every other 64 KiB chunk of both devices: half of each device goes to the storage.
    for (let off = 0; off < R; off += 128 * 1024) {
      await a.pwrite(off, stampSectors(Buffer.alloc(65536), off / SECTOR, 1));
      await b.pwrite(off, stampSectors(Buffer.alloc(65536), off / SECTOR, 2));
    }
    const imageA = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('A'));
    const imageB = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('B'));
    // Sector headers carry their sector number in the whole backing file.
    assert.equal(verifySectors(await imageA.pread(0, R), 0, () => 100), null, 'image A');
    assert.equal(verifySectors(await imageB.pread(0, R), (3 * R) / SECTOR, () => 103), null, 'image B');
    const rewritten = (seq: number, base: number) => (x: number) => ((x * SECTOR) % (128 * 1024) < 65536 ? seq : base);
    assert.equal(verifySectors(await a.pread(0, R), 0, rewritten(1, 100)), null, 'device A');
    for (const c of [a, b, imageA, imageB]) c.close();
    await s.destroy(id);
    await s.daemon.json('detach', '--device', 'A');
    await s.daemon.json('detach', '--device', 'B');
    // The backing file: device regions hold their new data, the storage holds exactly the
    // originals it was given (8 MiB: half of each device) and the rest of it, and the guard, are untouched.
    const after = fs.readFileSync(backing);
    assert.equal(verifySectors(after.subarray(4 * R, 5 * R), (4 * R) / SECTOR, () => 104), null, 'guard region untouched');
    const storage = after.subarray(R, 3 * R);
    const usedChunks = 8 * MiB / 65536;
    let originalsOfA = 0;
    let originalsOfB = 0;
    for (let c = 0; c < usedChunks; c++) {
      const chunk = storage.subarray(c * 65536, (c + 1) * 65536);
      const firstSector = chunk.readDoubleLE(8);
      const seq = chunk.readUInt32LE(4);
      assert.equal(verifySectors(chunk, firstSector, () => seq), null, `storage chunk ${c}`);
      if (seq === 100) originalsOfA++;
      if (seq === 103) originalsOfB++;
    }
    assert.deepEqual([originalsOfA, originalsOfB], [64, 64]);
    assert.equal(verifySectors(storage.subarray(8 * MiB), (R + 8 * MiB) / SECTOR, (x) => (x < (2 * R) / SECTOR ? 101 : 102)), null, 'unused storage untouched');
  });
});

describe('stretch: a tiny growth step; the store grows in steps with real allocation', () => {
  let s: Scenario;
  before(async () => (s = await Scenario.start([64 * MiB])));
  after(async () => s?.stop());

  it('grows by diff_storage_minimum as chunks are kept, never corrupts', async () => {
    const store = s.path('stretch-store');
    fs.writeFileSync(store, '');
    const step = 2 * MiB;
    const id = await s.take(['dev0'], { diffStorage: store, limit: 64 * MiB, diffStorageMinimum: step, chunkMinimumShift: 16 });
    assert.equal(fs.statSync(store).size, step, 'starts with one step');
    const device = await NbdClient.connect(s.daemon.nbdPath, 'dev0');
    const rnd = random(7);
    const sizes: number[] = [];
    const deadline = Date.now() + durationMs();
    let written = 0;
    while (written < 40 * MiB && (Date.now() < deadline || written < 12 * MiB)) {
      const off = Math.floor(rnd() * 1000) * 65536 % (64 * MiB - 65536);
      await device.pwrite(off, Buffer.alloc(65536, 1));
      written += 65536;
      const size = fs.statSync(store).size;
      if (sizes.at(-1) !== size) sizes.push(size);
    }
    assert.ok(sizes.length >= 3, `grew in steps: ${sizes.join(', ')}`);
    for (const size of sizes) assert.equal(size % step, 0, `size ${size} is a whole number of steps`);
    const st = fs.statSync(store);
    assert.ok(st.blocks * 512 >= st.size, 'really allocated (fallocate), not sparse');
    const event = await s.client.call(api.SnapshotWaitEvent, { id, timeoutMs: 10 });
    assert.equal(event.code, 'timeout', 'no corrupted or no_space event');
    assert.equal((await s.client.call(api.SnapshotGetInfo, { device: 'dev0' })).errorCode, 0);
    device.close();
    await s.destroy(id);
  });
});

describe('overflow: a limit too small corrupts the snapshot, never the device', () => {
  let s: Scenario;
  before(async () => (s = await Scenario.start([32 * MiB])));
  after(async () => s?.stop());

  it('emits no_space and corrupted (-ENOSPC); image I/O fails with EIO; device writes all land', async () => {
    const device = await NbdClient.connect(s.daemon.nbdPath, 'dev0');
    await device.pwrite(0, stampSectors(Buffer.alloc(32 * MiB), 0, 0));
    const store = s.path('overflow-store');
    fs.writeFileSync(store, '');
    const id = await s.take(['dev0'], { diffStorage: store, limit: 2 * MiB, diffStorageMinimum: MiB, chunkMinimumShift: 16 });
    const image = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev0'));
    const writes: Array<Promise<void>> = [];
    for (let off = 0; off < 32 * MiB; off += MiB) writes.push(device.pwrite(off, stampSectors(Buffer.alloc(MiB), off / SECTOR, 1)));
    await Promise.all(writes);
    // Each allocation that found no room says so (no_space); the first failure corrupts the snapshot.
    const events: api.SnapshotEventResult[] = [];
    for (;;) {
      const e = await s.client.call(api.SnapshotWaitEvent, { id, timeoutMs: 2000 });
      if (e.code === 'timeout') break;
      events.push(e);
    }
    const codes = events.map((e) => e.code);
    assert.ok(codes.includes('no_space'), JSON.stringify(events));
    // Warned first: low_space once the storage passed 90 % of its limit (the daemon's default).
    assert.equal(codes.filter((c) => c === 'low_space').length, 1, JSON.stringify(events));
    assert.ok(codes.indexOf('low_space') < codes.indexOf('no_space'), JSON.stringify(events));
    const low = events.find((e) => e.code === 'low_space')?.data as { usedSectors: number; limitSectors: number };
    assert.ok(low.usedSectors >= 0.9 * low.limitSectors && low.limitSectors === (2 * MiB) / SECTOR, JSON.stringify(low));
    assert.ok((events.find((e) => e.code === 'no_space')?.data.requestedSectors as number) > 0);
    const corrupted = events.filter((e) => e.code === 'corrupted');
    assert.equal(corrupted.length, 1, 'the first error wins');
    assert.deepEqual(corrupted[0]?.data, { device: 'dev0', errorCode: -28 });
    assert.equal((await s.client.call(api.SnapshotGetInfo, { device: 'dev0' })).errorCode, -28);
    const cli = await s.daemon.cli('snapshot_info', '--device', 'dev0', '--field', 'error_code');
    assert.equal(cli.stdout.trim(), '-28');
    await assert.rejects(image.pread(0, 4096), (e: unknown) => e instanceof NbdError && e.errno === 5);
    await assert.rejects(image.pwrite(0, Buffer.alloc(512)), (e: unknown) => e instanceof NbdError && e.errno === 5);
    // Copy-on-write has stopped; the device keeps working and holds every write.
    await device.pwrite(0, stampSectors(Buffer.alloc(MiB), 0, 2));
    const check = verifySectors(await device.pread(0, 32 * MiB), 0, (x) => (x < MiB / SECTOR ? 2 : 1));
    assert.equal(check, null);
    assert.ok(fs.statSync(store).size <= 2 * MiB, 'never past the limit');
    device.close();
    image.close();
    await s.destroy(id);
  });
});

describe('overflow under many concurrent writers: the watcher sees each condition once (low_space before no_space), and corrupted is never lost', () => {
  let s: Scenario;
  before(async () => (s = await Scenario.start([64 * MiB])));
  after(async () => s?.stop());

  it('an 8 MiB difference storage overrun by 64 MiB from 16 connections: one low_space, one no_space, then one corrupted', async () => {
    const store = s.path('flood-store');
    fs.writeFileSync(store, '');
    const id = await s.take(['dev0'], { diffStorage: store, limit: 8 * MiB, diffStorageMinimum: 2 * MiB, chunkMinimumShift: 16 });
    const clients = await Promise.all(Array.from({ length: 16 }, () => NbdClient.connect(s.daemon.nbdPath, 'dev0')));
    // Every 64 KiB chunk of the device gets a 4 KiB write: 1024 copies wanted, 128 fit.
    await Promise.all(clients.map(async (c, i) => {
      const writes: Array<Promise<void>> = [];
      for (let chunk = i; chunk < 1024; chunk += clients.length) writes.push(c.pwrite(chunk * 65536, Buffer.alloc(4096, i + 1)));
      await Promise.all(writes);
    }));
    assert.equal((await s.client.call(api.SnapshotGetInfo, { device: 'dev0' })).errorCode, -28);
    const events: string[] = [];
    for (;;) {
      const e = await s.client.call(api.SnapshotWaitEvent, { id, timeoutMs: 500 });
      if (e.code === 'timeout') break;
      events.push(e.code);
    }
    assert.deepEqual(events, ['low_space', 'no_space', 'corrupted']);
    for (const c of clients) c.close();
    await s.destroy(id);
  });
});
