// blksnap's bash tests with filesystems (ext4, xfs) on kernel block devices of devices and images.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as api from '../../src/control/protocol.js';
import { blksnapCli, TestDaemon } from '../helpers/daemon.js';
import { checksums, mkfs, Mounts, writeFiles } from '../helpers/mounts.js';
import { check, missing, run, sparseFile, tempDir } from '../helpers/tools.js';
import { BlksnapClient } from '../../src/client/connection.js';
import { Cbt } from '../../src/index.js';
import { fileExtents } from '../../src/os/libc.js';

const MiB = 1024 * 1024;
const skip = missing('nbdfuse', 'losetup', 'mkfs.ext4', 'mkfs.xfs', 'fusermount3');

describe('filesystems on kernel block devices', { skip }, () => {
  let daemon: TestDaemon;
  let client: BlksnapClient;
  let tmp: { dir: string; remove: () => void };
  let mounts: Mounts;

  before(async () => {
    tmp = tempDir();
    mounts = new Mounts(path.join(tmp.dir, 'mnt'));
    daemon = await TestDaemon.start(['--loop']);
    client = await BlksnapClient.connect(daemon.controlPath);
  });
  after(async () => {
    await mounts?.cleanup();
    await client?.close();
    await daemon?.stop(); // releases every loop device, FUSE mount and nbdfuse
    tmp?.remove();
  });

  async function attach(name: string, size: number, fsType: 'ext4' | 'xfs'): Promise<string> {
    const info = await client.call(api.DeviceAttach, { path: sparseFile(path.join(tmp.dir, name), size), name });
    assert.match(info.blockDevice ?? '', /^\/dev\/loop\d+$/);
    await mkfs(fsType, info.blockDevice as string);
    return info.blockDevice as string;
  }

  async function imageBlockDevice(device: string): Promise<string> {
    const info = await client.call(api.SnapshotGetInfo, { device });
    assert.ok(info.image?.blockDevice, `image of ${device} has a block device`);
    return info.image.blockDevice;
  }

  it('paths on the daemon\'s own devices are refused, with cold caches, and the daemon never blocks on them', async () => {
    const blockDevice = await attach('own', 64 * MiB, 'ext4');
    const dir = await mounts.mount(blockDevice, 'own');
    fs.mkdirSync(path.join(dir, 'sub/deeper'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'sub/deeper/diff'), '');
    fs.writeFileSync(path.join(dir, 'sub/deeper/file'), Buffer.alloc(256 * 1024, 7));
    // A user's own loop device over the store: writing there would bypass tracking.
    const byHand = (await check('losetup', ['-f', '--show', path.join(tmp.dir, 'own')])).trim();
    const other = sparseFile(path.join(tmp.dir, 'other'), 16 * MiB);
    await client.call(api.DeviceAttach, { path: other, name: 'other', loop: false });
    try {
      const env = { ...process.env, BLKSNAP_CONTROL: daemon.controlPath };
      const refused: Array<[string, string[]]> = [
        ['diff storage: a directory on the device\'s filesystem', ['snapshot_create', '--device', 'own', '--file', path.join(dir, 'sub/deeper'), '--limit', '16M']],
        ['diff storage: a file on the device\'s filesystem', ['snapshot_create', '--device', 'own', '--file', path.join(dir, 'sub/deeper/diff'), '--limit', '16M']],
        ['diff storage: the device\'s own /dev/loopN', ['snapshot_create', '--device', 'own', '--file', blockDevice, '--limit', '16M']],
        ['diff storage: a loop device over the device\'s store', ['snapshot_create', '--device', 'other', '--file', byHand, '--limit', '16M']],
        ['diff storage of another device on this filesystem', ['snapshot_create', '--device', 'other', '--file', path.join(dir, 'sub/deeper'), '--limit', '16M']],
        ['attach: a file on the device\'s filesystem', ['attach', '--device', path.join(dir, 'sub/deeper/file')]],
        ['attach: the device\'s /dev/loopN', ['attach', '--device', blockDevice]],
        ['attach: a loop device over the store', ['attach', '--device', byHand]],
        ['attach: the FUSE file behind the loop device', ['attach', '--device', path.join(daemon.dir, 'fuse/own/disk')]],
      ];
      for (const [what, args] of refused) {
        await check('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
        const started = Date.now();
        const r = await run(process.execPath, [blksnapCli, ...args], { env, timeoutMs: 20_000 });
        assert.notEqual(r.code, 0, `${what}: accepted`);
        assert.match(r.stderr, /EINVAL: .*(device of this daemon|refused)/, `${what}: ${r.stderr}`);
        assert.ok(Date.now() - started < 15_000, `${what}: took ${Date.now() - started} ms`);
      }
      // A repository there: backup_attach would read it through this very daemon.
      await assert.rejects(client.call(api.BackupAttach, { repo: path.join(dir, 'sub'), id: '20261201T000000.000Z-abcd', device: 'own' }), { code: 'EINVAL', message: /repository .* lies on a filesystem of .*refused/ });
      // What is meant to lie there works on a cold cache too: markdirtyblock --file.
      await check('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
      const mark = await run(process.execPath, [blksnapCli, 'markdirtyblock', '--device', 'own', '--file', path.join(dir, 'sub/deeper/file')], { env, timeoutMs: 20_000 });
      assert.equal(mark.code, 0, mark.stderr);
      // And a take with its freeze.
      await check('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
      const { id } = await client.call(api.SnapshotCreate, { devices: ['own'], diffStorage: tmp.dir, limit: 64 * MiB });
      const take = await client.call(api.SnapshotTake, { id });
      assert.deepEqual(take.warnings, []);
      await client.call(api.SnapshotDestroy, { id });
      assert.equal((await daemon.cli('list')).code, 0);
    } finally {
      await run('losetup', ['-d', byHand]);
      await mounts.umount(dir);
      await client.call(api.DeviceDetach, { device: 'other' });
      await client.call(api.DeviceDetach, { device: 'own' });
    }
  });

  it('simple: before-files in the images, after-files not; image writes survive a remount', async () => {
    const devices = { ext: await attach('simple-ext4', 128 * MiB, 'ext4'), xfs: await attach('simple-xfs', 320 * MiB, 'xfs') };
    const dirs = { ext: await mounts.mount(devices.ext, 'ext'), xfs: await mounts.mount(devices.xfs, 'xfs') };
    const before = { ext: writeFiles(dirs.ext, 'before', 8), xfs: writeFiles(dirs.xfs, 'before', 8) };
    const { id } = await client.call(api.SnapshotCreate, { devices: ['simple-ext4', 'simple-xfs'], diffStorage: tmp.dir, limit: 256 * MiB });
    const take = await client.call(api.SnapshotTake, { id });
    assert.deepEqual(take.warnings, [], 'both filesystems froze');
    writeFiles(dirs.ext, 'after', 4);
    writeFiles(dirs.xfs, 'after', 4);
    const images = { ext: await mounts.mount(await imageBlockDevice('simple-ext4'), 'ext-image'), xfs: await mounts.mount(await imageBlockDevice('simple-xfs'), 'xfs-image', ['nouuid']) };
    for (const k of ['ext', 'xfs'] as const) assert.deepEqual(checksums(images[k]), before[k], `${k} image holds exactly the before-files`);
    // Write into the mounted images, remount, verify.
    const written = { ext: writeFiles(images.ext, 'in-image', 3), xfs: writeFiles(images.xfs, 'in-image', 3) };
    for (const k of ['ext', 'xfs'] as const) {
      await mounts.umount(images[k]);
      images[k] = await mounts.mount(await imageBlockDevice(k === 'ext' ? 'simple-ext4' : 'simple-xfs'), `${k}-image`, k === 'xfs' ? ['nouuid'] : []);
      assert.deepEqual(checksums(images[k]), new Map([...before[k], ...written[k]]), `${k} image after remount`);
      await mounts.umount(images[k]);
    }
    await client.call(api.SnapshotDestroy, { id });
    for (const k of ['ext', 'xfs'] as const) {
      const sums = checksums(dirs[k]);
      for (const [name, sum] of before[k]) assert.equal(sums.get(name), sum, `${k}: ${name} on the device`);
      assert.equal([...sums.keys()].filter((n) => n.startsWith('after')).length, 4);
      assert.equal([...sums.keys()].filter((n) => n.startsWith('in-image')).length, 0, 'image writes never reach the device');
      await mounts.umount(dirs[k]);
    }
    await check('fsck.ext4', ['-n', '-f', devices.ext]);
    await check('xfs_repair', ['-n', devices.xfs]);
    for (const name of ['simple-ext4', 'simple-xfs']) await client.call(api.DeviceDetach, { device: name });
  });

  it('snapimage_write (xfs, nouuid): image and device written at the same time', async () => {
    const dev = await attach('siw-xfs', 320 * MiB, 'xfs');
    const dir = await mounts.mount(dev, 'siw');
    const before = writeFiles(dir, 'before', 4);
    const { id } = await client.call(api.SnapshotCreate, { devices: ['siw-xfs'], diffStorage: tmp.dir, limit: 256 * MiB });
    await client.call(api.SnapshotTake, { id });
    const image = await mounts.mount(await imageBlockDevice('siw-xfs'), 'siw-image', ['nouuid']);
    const [onDevice, onImage] = await Promise.all([
      (async () => writeFiles(dir, 'device', 12))(),
      (async () => writeFiles(image, 'image', 12))(),
    ]);
    await run('sync', []);
    assert.deepEqual(checksums(image), new Map([...before, ...onImage]));
    assert.deepEqual(checksums(dir), new Map([...before, ...onDevice]));
    await mounts.umount(image);
    await client.call(api.SnapshotDestroy, { id });
    await mounts.umount(dir);
    await check('xfs_repair', ['-n', dev]);
    await client.call(api.DeviceDetach, { device: 'siw-xfs' });
  });

  it('stretch and overflow with a mounted filesystem', async () => {
    const dev = await attach('flow-ext4', 128 * MiB, 'ext4');
    const dir = await mounts.mount(dev, 'flow');
    writeFiles(dir, 'base', 4);
    const store = path.join(tmp.dir, 'flow-store');
    fs.writeFileSync(store, '');
    // Stretch: 1 MiB steps up to 64 MiB; 16 MiB of new files fit.
    let { id } = await client.call(api.SnapshotCreate, { devices: ['flow-ext4'], diffStorage: store, limit: 64 * MiB, diffStorageMinimum: MiB });
    await client.call(api.SnapshotTake, { id });
    writeFiles(dir, 'stretch', 16, MiB);
    await run('sync', []);
    assert.ok(fs.statSync(store).size > 4 * MiB, `the store grew: ${fs.statSync(store).size}`);
    assert.equal((await client.call(api.SnapshotWaitEvent, { id, timeoutMs: 10 })).code, 'timeout');
    await client.call(api.SnapshotDestroy, { id });
    // Overflow: a 2 MiB limit cannot hold 16 MiB of changes.
    // The store holds the last snapshot's copies: reused on purpose.
    ({ id } = await client.call(api.SnapshotCreate, { devices: ['flow-ext4'], diffStorage: store, limit: 2 * MiB, diffStorageMinimum: MiB, force: true }));
    await client.call(api.SnapshotTake, { id });
    const after = writeFiles(dir, 'overflow', 16, MiB);
    await run('sync', []);
    // no_space events (one per refused growth) may come first, as many as the writes raced.
    let corrupted: api.SnapshotEventResult | undefined;
    const seen: string[] = [];
    for (const deadline = Date.now() + 10_000; !corrupted && Date.now() < deadline; ) {
      const e = await client.call(api.SnapshotWaitEvent, { id, timeoutMs: 500 });
      seen.push(e.code);
      if (e.code === 'corrupted') corrupted = e;
    }
    assert.ok(corrupted, `events seen: ${seen.join(' ')}`);
    assert.deepEqual(corrupted?.data, { device: 'flow-ext4', errorCode: -28 });
    const r = await run('dd', [`if=${await imageBlockDevice('flow-ext4')}`, 'of=/dev/null', 'bs=64k', 'count=16', 'iflag=direct']);
    assert.notEqual(r.code, 0, 'image reads fail with EIO');
    await client.call(api.SnapshotDestroy, { id });
    const sums = checksums(dir);
    for (const [name, sum] of after) assert.equal(sums.get(name), sum, `device file ${name} intact`);
    await mounts.umount(dir);
    await check('fsck.ext4', ['-n', '-f', dev]);
    await client.call(api.DeviceDetach, { device: 'flow-ext4' });
  });

  it('destroy while the image is mounted and read: reads fail, nothing hangs, the device is unharmed', async () => {
    const dev = await attach('destroy-ext4', 128 * MiB, 'ext4');
    const dir = await mounts.mount(dev, 'destroy');
    const files = writeFiles(dir, 'f', 8, MiB);
    const { id } = await client.call(api.SnapshotCreate, { devices: ['destroy-ext4'], diffStorage: tmp.dir, limit: 256 * MiB });
    await client.call(api.SnapshotTake, { id });
    const image = await mounts.mount(await imageBlockDevice('destroy-ext4'), 'destroy-image', ['ro', 'noload']);
    const reader = run('sh', ['-c', `while true; do cat ${image}/* > /dev/null 2>&1 || exit 3; echo 3 > /proc/sys/vm/drop_caches; done`], { timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 500));
    await client.call(api.SnapshotDestroy, { id });
    const result = await reader;
    assert.equal(result.code, 3, 'the reader saw an error and stopped');
    await mounts.umount(image).catch(() => run('umount', ['-l', image]));
    assert.deepEqual(checksums(dir), files);
    await mounts.umount(dir);
    await check('fsck.ext4', ['-n', '-f', dev]);
    await client.call(api.DeviceDetach, { device: 'destroy-ext4' });
  });

  it('cbt with a filesystem: the blocks of files written after the take carry the new number', async () => {
    const dev = await attach('cbt-ext4', 128 * MiB, 'ext4');
    const dir = await mounts.mount(dev, 'cbt');
    writeFiles(dir, 'old', 2, MiB);
    const cbt = new Cbt(client, 'cbt-ext4');
    const takeAndDestroy = async () => {
      const { id } = await client.call(api.SnapshotCreate, { devices: ['cbt-ext4'], diffStorage: tmp.dir, limit: 256 * MiB });
      await client.call(api.SnapshotTake, { id });
      await client.call(api.SnapshotDestroy, { id });
    };
    await takeAndDestroy();
    const backup = (await cbt.info()).changesNumber;
    writeFiles(dir, 'new', 1, 4 * MiB);
    await run('sync', []);
    await takeAndDestroy();
    const { blockSize, changesNumber } = await cbt.info();
    assert.equal(changesNumber, backup + 1);
    const blocksOf = async (file: string): Promise<number[]> => {
      const fd = fs.openSync(file, 'r');
      try {
        const blocks = new Set<number>();
        for (const e of await fileExtents(fd)) {
          for (let b = Math.floor(e.offset / blockSize); b <= Math.floor((e.offset + e.length - 1) / blockSize); b++) blocks.add(b);
        }
        return [...blocks];
      } finally {
        fs.closeSync(fd);
      }
    };
    const newBlocks = await blocksOf(path.join(dir, 'new-0.bin'));
    assert.ok(newBlocks.length * blockSize >= 4 * MiB);
    let map = await cbt.readMap();
    for (const b of newBlocks) assert.equal(map[b], changesNumber, `block ${b} of the new file`);
    // markdirtyblock --file: an old file's blocks become changed since the last backup.
    const oldBlocks = await blocksOf(path.join(dir, 'old-0.bin'));
    assert.ok(oldBlocks.some((b) => (map[b] as number) <= backup), 'the old file was unchanged');
    const r = await daemon.cli('markdirtyblock', '--device', 'cbt-ext4', '--file', path.join(dir, 'old-0.bin'));
    assert.equal(r.code, 0, r.stderr);
    map = await cbt.readMap();
    for (const b of oldBlocks) assert.equal(map[b], changesNumber, `block ${b} of the old file marked`);
    const elsewhere = await daemon.cli('markdirtyblock', '--device', 'cbt-ext4', '--file', path.join(tmp.dir, 'cbt-ext4'));
    assert.match(elsewhere.stderr, /EINVAL: .* is not on a filesystem mounted from/);
    // A FIFO (no writer ever comes): refused at once, and no thread-pool thread stays blocked in its open.
    const fifo = path.join(dir, 'fifo');
    await check('mkfifo', [fifo]);
    const fifoMarks = await Promise.all(Array.from({ length: 6 }, () => daemon.cli('markdirtyblock', '--device', 'cbt-ext4', '--file', fifo)));
    for (const m of fifoMarks) assert.match(m.stderr, /EINVAL: .*fifo is a FIFO, not a regular file/);
    const stillServing = path.join(tmp.dir, 'after-fifo');
    fs.writeFileSync(stillServing, Buffer.alloc(MiB));
    await client.call(api.DeviceAttach, { path: stillServing });
    await client.call(api.DeviceDetach, { device: 'after-fifo' });
    await mounts.umount(dir);
    await client.call(api.DeviceDetach, { device: 'cbt-ext4' });
  });

  it('a filesystem that cannot be frozen: the take goes on with a warning', async () => {
    const dev = await attach('frozen-ext4', 64 * MiB, 'ext4');
    const dir = await mounts.mount(dev, 'frozen');
    await check('fsfreeze', ['-f', dir]); // already frozen: FIFREEZE answers EBUSY
    try {
      const { id } = await client.call(api.SnapshotCreate, { devices: ['frozen-ext4'], diffStorage: tmp.dir, limit: 64 * MiB });
      const take = await client.call(api.SnapshotTake, { id });
      assert.equal(take.warnings.length, 1);
      assert.match(take.warnings[0] as string, /cannot freeze .*frozen.*EBUSY/);
      assert.match(daemon.log, /cannot freeze/);
      await client.call(api.SnapshotDestroy, { id });
    } finally {
      await check('fsfreeze', ['-u', dir]);
    }
    await mounts.umount(dir);
    // A mounted device cannot be detached.
    const mounted = await mounts.mount(dev, 'frozen');
    await assert.rejects(client.call(api.DeviceDetach, { device: 'frozen-ext4' }), { code: 'EBUSY' });
    await mounts.umount(mounted);
    await client.call(api.DeviceDetach, { device: 'frozen-ext4' });
  });
});
