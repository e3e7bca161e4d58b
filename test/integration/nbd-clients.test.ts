// Real NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy) against a running blksnapd.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { check, loopDevice, missing, run, sparseFile, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const skip = missing('qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy');

describe('real NBD clients', { skip }, () => {
  let daemon: TestDaemon;
  let tmp: { dir: string; remove: () => void };
  let uri: string;

  before(async () => {
    tmp = tempDir();
    sparseFile(path.join(tmp.dir, 'disk0'), 256 * MiB);
    daemon = await TestDaemon.start(['--attach', path.join(tmp.dir, 'disk0')]);
    uri = daemon.uri('disk0');
  });
  after(async () => {
    await daemon?.stop();
    tmp?.remove();
  });

  it('qemu-io pattern writes and reads at unaligned and large offsets', async () => {
    const ops = [
      ['0x5a', 1, 511],
      ['0xa5', 4095, 8193],
      ['0x33', 200 * MiB + 12345, 3 * MiB + 7],
      ['0x44', 256 * MiB - 4096, 4096],
      ['0x66', 100 * MiB + 3, MiB + 5], // written with FUA below
    ] as const;
    for (const [p, off, len] of ops) await check('qemu-io', ['-f', 'raw', '-c', `write ${p === '0x66' ? '-f ' : ''}-P ${p} ${off} ${len}`, uri]);
    for (const [p, off, len] of ops) {
      const out = await check('qemu-io', ['-f', 'raw', '-c', `read -P ${p} ${off} ${len}`, uri]);
      assert.match(out, new RegExp(`read ${len}/${len} bytes`));
      assert.doesNotMatch(out, /Pattern verification failed/);
    }
    // Neighbours stay untouched: the byte before the first write and after a write are zero.
    const around = await check('qemu-io', ['-f', 'raw', '-c', 'read -P 0 0 1', '-c', `read -P 0 ${200 * MiB + 12345 + 3 * MiB + 7} 1`, uri]);
    assert.doesNotMatch(around, /Pattern verification failed/);
    // And the bytes really are in the backing file.
    const fd = fs.openSync(path.join(tmp.dir, 'disk0'), 'r');
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, 4095 + 8192);
    fs.closeSync(fd);
    assert.equal(b[0], 0xa5);
  });

  it('qemu-img convert in and out, and qemu-img compare', async () => {
    const src = path.join(tmp.dir, 'src.raw');
    await check('qemu-img', ['create', '-f', 'raw', src, '256M']);
    await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 100M 5M', '-c', 'write -P 0x33 255M 1M', src]);
    await check('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri]);
    await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri]);
    const out = path.join(tmp.dir, 'out.qcow2');
    await check('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', uri, out]);
    await check('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', out, src]);
    // A difference is found: compare must fail after one byte changes.
    await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 100M 1', uri]);
    const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
  });

  it('nbdinfo --json reports size, block sizes and flags', async () => {
    const info = JSON.parse(await check('nbdinfo', ['--json', uri])) as { exports: Array<Record<string, unknown>> };
    const e = info.exports[0] as Record<string, unknown>;
    assert.equal(e['export-size'], 256 * MiB);
    assert.equal(e.block_size_minimum, 1);
    assert.equal(e.block_size_preferred, 4096);
    assert.equal(e.block_size_maximum, 32 * MiB);
    for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_multi_conn', 'can_cache', 'can_df']) {
      assert.equal(e[flag], true, flag);
    }
    assert.equal(e.is_read_only, false);
    assert.deepEqual(e.contexts, ['base:allocation', 'x-blksnap:cbt', 'qemu:dirty-bitmap:cbt-0'], 'allocation and the device\'s CBT');
  });

  it('nbdinfo --map shows the holes of a sparse file, and trim makes new ones', async () => {
    const file = sparseFile(path.join(tmp.dir, 'sparse'), 64 * MiB);
    await daemon.json('attach', '--device', file);
    try {
      const u = daemon.uri('sparse');
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 1 1M 1M', '-c', 'write -P 2 40M 2M', u]);
      const map = await check('nbdinfo', ['--map', '--json', u]);
      const extents = JSON.parse(map) as Array<{ offset: number; length: number; type: number }>;
      const data = extents.filter((x) => (x.type & 1) === 0).map((x) => [x.offset, x.length]);
      assert.deepEqual(data, [[MiB, MiB], [40 * MiB, 2 * MiB]]);
      assert.equal(extents.reduce((s, x) => s + x.length, 0), 64 * MiB);
      await check('qemu-io', ['-f', 'raw', '-c', 'discard 40M 2M', u]);
      const after = JSON.parse(await check('nbdinfo', ['--map', '--json', u])) as Array<{ offset: number; length: number; type: number }>;
      assert.deepEqual(after.filter((x) => (x.type & 1) === 0).map((x) => [x.offset, x.length]), [[MiB, MiB]]);
      await check('qemu-io', ['-f', 'raw', '-c', 'read -P 0 40M 2M', u]);
    } finally {
      await daemon.cli('detach', '--device', 'sparse');
    }
  });

  it('nbdcopy both ways', async () => {
    const src = path.join(tmp.dir, 'copy-src');
    sparseFile(src, 256 * MiB);
    await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 3M 9M', '-c', 'write -P 0x62 128M 1M', src]);
    await check('nbdcopy', [src, uri]);
    const back = path.join(tmp.dir, 'copy-back');
    await check('nbdcopy', [uri, back]);
    assert.ok(fs.readFileSync(src).equals(fs.readFileSync(back)));
  });

  it('two clients write at once on two connections; flush on one covers both', async () => {
    const a = run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x0a 0 32M', '-c', 'flush', uri]);
    const b = run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x0b 32M 32M', uri]);
    const [ra, rb] = await Promise.all([a, b]);
    assert.equal(ra.code, 0, ra.stderr);
    assert.equal(rb.code, 0, rb.stderr);
    await check('qemu-io', ['-f', 'raw', '-c', 'read -P 0x0a 0 32M', '-c', 'read -P 0x0b 32M 32M', uri]);
    // Many requests in flight on several connections at once: nbdcopy with 4 connections × 64 requests.
    const src = path.join(tmp.dir, 'pattern');
    const bytes = Buffer.alloc(64 * MiB);
    for (let i = 0; i < bytes.length; i += 4096) bytes.writeUInt32LE(i, i);
    fs.writeFileSync(src, bytes);
    await check('nbdcopy', ['--connections=4', '--requests=64', '--request-size=65536', src, uri]);
    const back = path.join(tmp.dir, 'pattern-back');
    await check('nbdcopy', ['--connections=4', '--requests=64', uri, back]);
    assert.ok(fs.readFileSync(back).subarray(0, 64 * MiB).equals(bytes));
  });

  it('TCP only when asked for: --listen serves the same exports', async () => {
    const file = sparseFile(path.join(tmp.dir, 'tcp-disk'), 8 * MiB);
    const tcp = await TestDaemon.start(['--listen', '127.0.0.1:0', '--tls', 'off', '--attach', file]);
    try {
      const port = /nbd tcp port (\d+)/.exec(tcp.log)?.[1];
      assert.ok(port, tcp.log);
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 64k', '-c', 'read -P 0x42 0 64k', `nbd://127.0.0.1:${port}/tcp-disk`]);
      assert.doesNotMatch(daemon.log, /tcp port/, 'the default daemon has no TCP listener');
    } finally {
      await tcp.stop();
    }
  });

  it('CACHE, FLUSH and WRITE_ZEROES with FAST_ZERO and NO_HOLE answer success', async () => {
    const { RawNbd, NBD } = await import('../helpers/raw-nbd.js');
    const c = await RawNbd.connect(daemon.nbdPath);
    await c.handshake('disk0');
    c.request(NBD.CACHE, 0, MiB);
    assert.equal((await c.simpleReply()).error, 0);
    c.request(NBD.WRITE_ZEROES, MiB, MiB, 1 << 4 /* FAST_ZERO */);
    assert.equal((await c.simpleReply()).error, 0);
    c.request(NBD.WRITE_ZEROES, 3 * MiB, 4096, (1 << 1) | 1 /* NO_HOLE | FUA */);
    assert.equal((await c.simpleReply()).error, 0);
    c.request(NBD.FLUSH, 0, 0);
    assert.equal((await c.simpleReply()).error, 0);
    c.close();
    await check('qemu-io', ['-f', 'raw', '-c', `read -P 0 ${MiB} ${MiB}`, uri]);
  });

  it('serves a real block device (loop device)', { skip: missing('losetup') }, async () => {
    const file = sparseFile(path.join(tmp.dir, 'loop-backing'), 32 * MiB);
    const loop = await loopDevice(file);
    try {
      const d = await daemon.json<{ name: string; size: number }>('attach', '--device', loop.device);
      assert.equal(d.size, 32 * MiB);
      assert.equal(d.name, path.basename(loop.device));
      const u = daemon.uri(d.name);
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x7e 1000 100000', '-c', 'flush', u]);
      await check('qemu-io', ['-f', 'raw', '-c', 'read -P 0x7e 1000 100000', u]);
      // The same block device cannot be attached twice.
      const again = await daemon.cli('attach', '--device', loop.device, '--name', 'again');
      assert.notEqual(again.code, 0);
      assert.match(again.stderr, /EBUSY/);
      await daemon.json('detach', '--device', loop.device);
    } finally {
      await loop.detach();
    }
    const fd = fs.openSync(file, 'r');
    const b = Buffer.alloc(100000);
    fs.readSync(fd, b, 0, b.length, 1000);
    fs.closeSync(fd);
    assert.ok(b.every((x) => x === 0x7e));
  });
});
