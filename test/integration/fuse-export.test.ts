// The in-daemon FUSE front end: the file behind /dev/loopN, used directly and through the loop
// device, agrees byte for byte with NBD; its edges (end of device, size changes, holes) behave as a
// file's; fio's verify over many requests in flight finds no torn or misplaced block.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { BlockDevice } from '../../src/core/block-device.js';
import { FuseExport } from '../../src/frontends/fuse/fuse-export.js';
import { possibleCpuCount } from '../../src/frontends/fuse/ring-switch.js';
import { TestDaemon } from '../helpers/daemon.js';
import { NbdClient } from '../helpers/nbd-client.js';
import { check, missing, sparseFile, tempDir } from '../helpers/tools.js';

const SIZE = 16 << 20;
const readOr = (file: string): string => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '');
const skip = missing('losetup', 'fio', 'fallocate', 'blkdiscard');

/** The kernel has FUSE over io_uring (6.14+, CONFIG_FUSE_IO_URING) and at most 16 CPUs (the daemon's limit for rings). */
const hasFuseRing = fs.existsSync('/sys/module/fuse/parameters/enable_uring') && possibleCpuCount() <= 16 && !/^[12]/.test(readOr('/proc/sys/kernel/io_uring_disabled'));

for (const ioUring of ['on', 'off'] as const)
describe(`in-daemon FUSE front end, requests by ${ioUring === 'on' ? 'io_uring' : 'read/write'}`, { skip }, () => {
  let tmp: ReturnType<typeof tempDir>;
  let daemon: TestDaemon;
  let nbd: NbdClient;
  let loop = '';
  let file = '';

  before(async () => {
    tmp = tempDir();
    daemon = await TestDaemon.start(['--loop-via', 'fuse', '--fuse-io-uring', ioUring]);
    const attached = await daemon.json<{ blockDevice: string }>('attach', '--device', sparseFile(path.join(tmp.dir, 'disk'), SIZE), '--name', 'disk', '--loop');
    loop = attached.blockDevice;
    file = path.join(daemon.dir, 'fuse', 'disk', 'disk');
    nbd = await NbdClient.connect(daemon.nbdPath, 'disk');
  });

  after(async () => {
    nbd?.close();
    await daemon?.stop();
    tmp?.remove();
  });

  it('is a directory holding one file of the device size', () => {
    assert.deepEqual(fs.readdirSync(path.dirname(file)), ['disk']);
    const st = fs.statSync(file);
    assert.ok(st.isFile());
    assert.equal(st.size, SIZE);
    assert.match(loop, /^\/dev\/loop\d+$/);
    assert.equal(Number(fs.readFileSync(`/sys/block/${path.basename(loop)}/size`, 'utf8')) * 512, SIZE);
  });

  it('unaligned writes to the file are seen over NBD, and NBD writes in the file', async () => {
    const fd = fs.openSync(file, 'r+');
    try {
      const a = randomBytes(777);
      fs.writeSync(fd, a, 0, a.length, 12_345);
      assert.deepEqual(await nbd.pread(12_345, a.length), a);
      const b = randomBytes(3000);
      await nbd.pwrite(SIZE - 5000, b);
      const back = Buffer.alloc(b.length);
      assert.equal(fs.readSync(fd, back, 0, back.length, SIZE - 5000), b.length);
      assert.deepEqual(back, b);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('reads at the end are short; writes past it fail with EFBIG; the size cannot change', () => {
    const fd = fs.openSync(file, 'r+');
    try {
      const tail = Buffer.alloc(4096);
      assert.equal(fs.readSync(fd, tail, 0, 4096, SIZE - 100), 100);
      assert.equal(fs.readSync(fd, tail, 0, 4096, SIZE), 0);
      assert.throws(() => fs.writeSync(fd, Buffer.alloc(200), 0, 200, SIZE - 100), { code: 'EFBIG' });
      assert.throws(() => fs.ftruncateSync(fd, SIZE / 2), { code: 'EPERM' });
      fs.ftruncateSync(fd, SIZE); // the same size is no change
    } finally {
      fs.closeSync(fd);
    }
  });

  it('direct 1 MiB writes through the loop device land where NBD reads them', async () => {
    const data = randomBytes(3 << 20);
    const source = path.join(tmp.dir, 'source');
    fs.writeFileSync(source, data);
    await check('dd', [`if=${source}`, `of=${loop}`, 'bs=1M', 'seek=5', 'oflag=direct', 'status=none']);
    assert.ok((await nbd.pread(5 << 20, data.length)).equals(data));
    await check('dd', [`if=${loop}`, `of=${source}.back`, 'bs=1M', 'skip=5', 'count=3', 'iflag=direct', 'status=none']);
    assert.ok(fs.readFileSync(`${source}.back`).equals(data));
  });

  it('a punched hole and a discard of the loop device read as zeroes', async () => {
    await nbd.pwrite(1 << 20, Buffer.alloc(256 << 10, 0xaa));
    await check('fallocate', ['-p', '-o', String(1 << 20), '-l', String(64 << 10), file]);
    const after1 = await nbd.pread(1 << 20, 256 << 10);
    assert.ok(after1.subarray(0, 64 << 10).equals(Buffer.alloc(64 << 10)));
    assert.ok(after1.subarray(64 << 10).equals(Buffer.alloc(192 << 10, 0xaa)));
    await check('blkdiscard', ['-o', String((1 << 20) + (128 << 10)), '-l', String(128 << 10), loop]);
    assert.ok((await nbd.pread((1 << 20) + (128 << 10), 128 << 10)).equals(Buffer.alloc(128 << 10)));
  });

  it('fio verify: 4 KiB random writes at depth 32 through the loop device read back intact', async () => {
    const common = ['--name=v', `--filename=${loop}`, '--ioengine=libaio', '--direct=1', '--bs=4k', '--iodepth=32', '--size=8m', '--offset=8m', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0'];
    await check('fio', [...common, '--rw=randwrite', '--do_verify=0', '--output-format=terse'], { timeoutMs: 120_000 });
    const out = await check('fio', [...common, '--rw=randwrite', '--verify_only=1', '--output-format=terse'], { timeoutMs: 120_000 });
    assert.doesNotMatch(out, /verify|bad/i);
  });

  it('the image\'s /dev/loopN reads the take while the device is written (reader or ring threads read untouched chunks themselves)', async () => {
    const take = randomBytes(SIZE);
    await nbd.pwrite(0, take);
    const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'disk', '--file', tmp.dir, '--limit', '32M');
    await daemon.json('snapshot_take', '--id', id);
    try {
      const info = await daemon.json<{ image?: { blockDevice?: string } }>('snapshot_info', '--device', 'disk');
      const imageLoop = info?.image?.blockDevice;
      assert.ok(imageLoop, 'the image has a loop device');
      let isWriting = true;
      let writes = 0;
      const writer = (async () => {
        for (let i = 0; isWriting; i++) {
          await nbd.pwrite(((i * 2654435761) % (SIZE / 4096)) * 4096, randomBytes(4096));
          writes++;
        }
      })();
      try {
        for (let round = 0; round < 4; round++) {
          const copy = path.join(tmp.dir, `image-${round}`);
          await check('dd', [`if=${imageLoop}`, `of=${copy}`, 'bs=64K', 'iflag=direct', 'status=none']);
          const read = fs.readFileSync(copy);
          const bad = read.findIndex((b, i) => b !== take[i]);
          assert.equal(bad, -1, `round ${round}: the image read differs from the take at byte ${bad}`);
        }
      } finally {
        isWriting = false;
        await writer;
      }
      assert.ok(writes > 20, `the device was written meanwhile (${writes} writes)`);
    } finally {
      await daemon.json('snapshot_destroy', '--id', id);
    }
  });
});

describe('FUSE reads answered by the reader and ring threads', { skip: missing('losetup') }, () => {
  for (const ioUring of [true, false])
  it(`a cached READ is answered from the device descriptor with the bytes read() would give; uncached and end-of-device reads go to the device (${ioUring ? 'io_uring' : 'read/write'})`, async () => {
    const tmp = tempDir();
    const size = 8 << 20;
    const backing = path.join(tmp.dir, 'backing');
    const bytes = randomBytes(size);
    fs.writeFileSync(backing, bytes); // written, so cached
    const fd = fs.openSync(backing, 'r');
    let deviceReads = 0;
    const device = {
      name: 'cached',
      size: size - 1000, // the device ends inside a page: reads there are short, and the daemon's
      isReadOnly: true,
      canTrim: false,
      onClose: () => ({ dispose() {} }),
      fast: { sharedReads: () => ({ fd }) },
      read: async (offset: number, into: Uint8Array) => {
        deviceReads++;
        fs.readSync(fd, into, 0, into.length, offset);
      },
    } as unknown as BlockDevice;
    const fuse = FuseExport.mount(device, path.join(tmp.dir, 'm'), { ioUring });
    try {
      if (ioUring && hasFuseRing) {
        // The kernel's INIT at mount (read by a /dev/fuse reader) starts the rings; then they register.
        await Promise.race([fuse.ringsReady, new Promise((_, reject) => setTimeout(() => reject(new Error('the rings did not start')), 5000))]);
        await new Promise((r) => setTimeout(r, 50));
      }
      // Asynchronous reads: this thread answers the kernel's other requests (open, uncached reads).
      const file = await fs.promises.open(fuse.file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
      try {
        const block = Buffer.alloc(256 << 10);
        const readAt = async (offset: number, length: number): Promise<Buffer> => {
          const { bytesRead } = await file.read(block, 0, length, offset);
          return Buffer.from(block.subarray(0, bytesRead));
        };
        for (let i = 0; i < 64; i++) {
          const offset = ((i * 7919) % 120) * 65536;
          const answered = fuse.readsAnsweredByReaders;
          assert.deepEqual(await readAt(offset, 65536), bytes.subarray(offset, offset + 65536), `cached read at ${offset}`);
          // Counted by the time its reply is in (a count after the reply lagged: the checks below failed now and then).
          assert.equal(fuse.readsAnsweredByReaders, answered + 1, `the read at ${offset} is counted once its reply is in`);
        }
        assert.ok(fuse.readsAnsweredByReaders >= 64, `${fuse.readsAnsweredByReaders} reads answered by the readers`);
        if (ioUring && hasFuseRing) {
          assert.equal(fuse.route, 'io_uring');
          assert.ok(fuse.readsAnsweredByRings >= 60, `${fuse.readsAnsweredByRings} reads answered by the rings`);
        } else {
          assert.equal(fuse.readsAnsweredByRings, 0);
          // By read/write, 64 KiB reads are spliced from the page cache; 4 KiB ones, and unaligned ones, read and written.
          assert.ok(fuse.readsSplicedByReaders >= 60, `${fuse.readsSplicedByReaders} reads spliced by the readers`);
          const spliced = fuse.readsSplicedByReaders;
          for (const [offset, length] of [[4096, 4096], [512, 4096], [(5 << 20) + 512, 65536], [(1 << 20) - 512, 3 * 65536]] as const) {
            assert.deepEqual(await readAt(offset, length), bytes.subarray(offset, offset + length), `cached read of ${length} at ${offset}`);
          }
          assert.equal(fuse.readsSplicedByReaders, spliced + 2, 'the two reads of 64 KiB and more were spliced');
        }
        assert.equal(deviceReads, 0, 'no cached read went to the device');
        // The end: short, by the device.
        const tail = await readAt(size - 65536, 65536);
        assert.deepEqual(tail, bytes.subarray(size - 65536, size - 1000));
        assert.ok(deviceReads > 0, 'a read reaching the end went to the device');
        // Out of the page cache (written back first: dirty pages are not dropped): the device serves it, with the same bytes.
        const writable = fs.openSync(backing, 'r+');
        fs.fsyncSync(writable);
        fs.closeSync(writable);
        fs.writeFileSync('/proc/sys/vm/drop_caches', '1');
        const before = deviceReads;
        assert.deepEqual(await readAt(3 << 20, 65536), bytes.subarray(3 << 20, (3 << 20) + 65536));
        assert.ok(deviceReads > before, 'an uncached read went to the device');
      } finally {
        await file.close();
      }
    } finally {
      await fuse.unmount();
      fs.closeSync(fd);
      tmp.remove();
    }
  });
});

describe('FUSE over io_uring refused', { skip: !hasFuseRing || !fs.existsSync('/proc/sys/kernel/io_uring_disabled') }, () => {
  it('where the process may not use io_uring (kernel.io_uring_disabled=2, as a container\'s seccomp profile), an export serves by read/write', async () => {
    const tmp = tempDir();
    const backing = path.join(tmp.dir, 'backing');
    const bytes = randomBytes(1 << 20);
    fs.writeFileSync(backing, bytes);
    // A fresh process: whether io_uring may be used is asked once per process.
    const script = path.join(tmp.dir, 'serve.mjs');
    fs.writeFileSync(script, `
      import * as fs from 'node:fs';
      const { FuseExport } = await import(${JSON.stringify(new URL('../../src/frontends/fuse/fuse-export.js', import.meta.url).href)});
      const fd = fs.openSync(${JSON.stringify(backing)}, 'r');
      const device = { name: 'refused', size: ${bytes.length}, isReadOnly: true, canTrim: false, onClose: () => ({ dispose() {} }),
        read: async (offset, into) => { fs.readSync(fd, into, 0, into.length, offset); } };
      const log = [];
      const fuse = FuseExport.mount(device, ${JSON.stringify(path.join(tmp.dir, 'm'))}, { ioUring: true, log: (line) => log.push(line) });
      const file = await fs.promises.open(fuse.file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
      const block = Buffer.alloc(${bytes.length});
      const { bytesRead } = await file.read(block, 0, block.length, 0);
      await file.close();
      await new Promise((r) => setTimeout(r, 300)); // a ring thread that tried would have failed by now
      process.stdout.write(JSON.stringify({ route: fuse.route, log, digest: (await import('node:crypto')).createHash('sha256').update(block.subarray(0, bytesRead)).digest('hex') }));
      await fuse.unmount();
    `);
    const before = fs.readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim();
    fs.writeFileSync('/proc/sys/kernel/io_uring_disabled', '2');
    try {
      const out = JSON.parse(await check(process.execPath, [script], { timeoutMs: 30_000 })) as { route: string; log: string[]; digest: string };
      assert.equal(out.route, 'read/write');
      assert.deepEqual(out.log.filter((line) => /ring/.test(line)), [], 'no ring was tried');
      assert.equal(out.digest, createHash('sha256').update(bytes).digest('hex'), 'the file reads as the device');
    } finally {
      fs.writeFileSync('/proc/sys/kernel/io_uring_disabled', before);
      // A child that failed before its unmount leaves its filesystem behind, without a server.
      if (fs.readFileSync('/proc/mounts', 'utf8').includes(path.join(tmp.dir, 'm'))) await check('umount', ['-l', path.join(tmp.dir, 'm')]).catch(() => undefined);
      tmp.remove();
    }
  });
});

describe('FUSE export life', { skip: missing('losetup') }, () => {
  for (const ioUring of [false, true])
  it(`mounted and unmounted at once, 30 times: the process survives (readers${ioUring ? ' and rings' : ''} are never killed mid-start)`, async () => {
    // Terminating a reader while it still loads its FFI aborted the whole process; a snapshot
    // destroyed right after its take did exactly that. Rings start after INIT, maybe after the unmount began.
    const tmp = tempDir();
    const device = { name: 'churn', size: 1 << 20, isReadOnly: false, canTrim: false, onClose: () => ({ dispose() {} }) } as unknown as BlockDevice;
    try {
      for (let i = 0; i < 30; i++) {
        const fuse = FuseExport.mount(device, path.join(tmp.dir, `m${i % 3}`), { ioUring });
        if (ioUring && hasFuseRing && i % 3 === 0) await fuse.ringsReady;
        else if (i % 2) await new Promise((r) => setTimeout(r, i % 5));
        await fuse.unmount();
      }
      assert.doesNotMatch(fs.readFileSync('/proc/mounts', 'utf8'), new RegExp(tmp.dir));
    } finally {
      tmp.remove();
    }
  });
});
