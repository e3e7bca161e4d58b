// Fault injection with real failing parts: a full filesystem under a device and under a difference
// storage, a store that fails chosen ranges with EIO (nbdkit's eval plugin behind nbdfuse), and
// clients that vanish at every point of a request. Clear errors, no crash, nothing acknowledged lost.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as api from '../../src/control/protocol.js';
import { BlksnapClient } from '../../src/client/connection.js';
import { TestDaemon } from '../helpers/daemon.js';
import { NbdClient } from '../helpers/nbd-client.js';
import { encodeRequest, NBD, RawNbd } from '../helpers/raw-nbd.js';
import { check, missing, run, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const EIO = 5;
const ENOSPC = 28;

async function mountTmpfs(dir: string, size: string): Promise<() => Promise<void>> {
  fs.mkdirSync(dir, { recursive: true });
  await check('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  return async () => void (await run('umount', ['-l', dir]));
}

async function waitFor(test: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('faults', { skip: missing('nbdkit', 'nbdfuse', 'qemu-io') }, () => {
  let tmp: { dir: string; remove: () => void };
  let daemon: TestDaemon;
  let client: BlksnapClient;
  const cleanups: Array<() => Promise<void>> = [];

  before(async () => {
    tmp = tempDir();
    daemon = await TestDaemon.start();
    client = await BlksnapClient.connect(daemon.controlPath);
  });
  after(async () => {
    await client?.close();
    await daemon?.stop();
    for (const c of cleanups.reverse()) await c();
    tmp?.remove();
  });

  it('a device on a filesystem that fills up: writes get ENOSPC, flushed data stays, the daemon goes on', async () => {
    const small = path.join(tmp.dir, 'small-fs');
    cleanups.push(await mountTmpfs(small, '6m'));
    const file = path.join(small, 'dev');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 32 * MiB); // sparse: room for 6 MiB of it
    await client.call(api.DeviceAttach, { path: file, name: 'full' });
    const nbd = await NbdClient.connect(daemon.nbdPath, 'full');
    const kept = randomBytes(2 * MiB);
    await nbd.pwrite(0, kept);
    await nbd.flush();
    let firstError: unknown = null;
    for (let off = 4 * MiB; off < 32 * MiB && firstError === null; off += MiB) {
      await nbd.pwrite(off, randomBytes(MiB)).catch((e: unknown) => (firstError = e));
    }
    assert.ok(firstError, 'a write failed once the filesystem was full');
    assert.match(String(firstError), new RegExp(`\\b(${ENOSPC}|ENOSPC)\\b`), `the client was told ENOSPC: ${String(firstError)}`);
    assert.ok((await nbd.pread(0, 2 * MiB)).equals(kept), 'flushed data before the fault is intact');
    nbd.close();
    assert.equal((await daemon.cli('list')).code, 0, 'the daemon answers');
    await client.call(api.DeviceDetach, { device: 'full' });
  });

  it('a difference storage on a filesystem that fills up: the snapshot overflows, the device is intact', async () => {
    const small = path.join(tmp.dir, 'small-diff');
    cleanups.push(await mountTmpfs(small, '3m'));
    const file = path.join(tmp.dir, 'origin');
    const original = randomBytes(16 * MiB);
    fs.writeFileSync(file, original);
    await client.call(api.DeviceAttach, { path: file, name: 'origin' });
    const { id } = await client.call(api.SnapshotCreate, { devices: ['origin'], diffStorage: small, limit: 64 * MiB, diffStorageMinimum: MiB, chunkMinimumShift: 16 });
    await client.call(api.SnapshotTake, { id });
    const nbd = await NbdClient.connect(daemon.nbdPath, 'origin');
    const written = randomBytes(16 * MiB);
    for (let off = 0; off < 16 * MiB; off += MiB) await nbd.pwrite(off, written.subarray(off, off + MiB));
    await nbd.flush();
    assert.ok((await nbd.pread(0, 16 * MiB)).equals(written), 'every device write landed');
    const info = await client.call(api.SnapshotGetInfo, { device: 'origin' });
    assert.equal(info.errorCode, -ENOSPC, 'the snapshot is corrupted with -ENOSPC');
    const codes: string[] = [];
    for (;;) {
      const e = await client.call(api.SnapshotWaitEvent, { id, timeoutMs: 200 });
      if (e.code === 'timeout') break;
      codes.push(e.code);
    }
    assert.ok(codes.includes('no_space') && codes.includes('corrupted'), `events: ${codes.join(', ')}`);
    const image = await NbdClient.connect(daemon.nbdPath, 'origin-image');
    await assert.rejects(image.pread(0, 4096), new RegExp(`\\b(${EIO}|EIO)\\b`));
    image.close();
    nbd.close();
    await client.call(api.SnapshotDestroy, { id });
    assert.ok(fs.readFileSync(file).equals(written), 'the device file holds exactly what was written');
    await client.call(api.DeviceDetach, { device: 'origin' });
  });

  it('a store that fails chosen ranges with EIO: the client gets EIO there, everything else works', async () => {
    const dir = path.join(tmp.dir, 'eio');
    fs.mkdirSync(dir);
    const backing = path.join(dir, 'backing');
    fs.writeFileSync(backing, randomBytes(8 * MiB));
    const bad = { start: 3 * MiB, end: 3 * MiB + 64 * 1024 };
    // nbdkit's eval plugin: reads and writes touching [start, end) fail with EIO.
    const isBad = `[ $4 -lt ${bad.end} ] && [ $(($4 + $3)) -gt ${bad.start} ]`;
    const sock = path.join(dir, 'nbdkit.sock');
    const nbdkit: ChildProcess = spawn('nbdkit', ['-f', '-U', sock, 'eval',
      `get_size=stat -c %s ${backing}`,
      'can_write=exit 0', 'can_flush=exit 0', `flush=sync ${backing}`,
      `pread=if ${isBad}; then echo "EIO injected fault" >&2; exit 1; fi; dd if=${backing} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none`,
      `pwrite=if ${isBad}; then cat >/dev/null; echo "EIO injected fault" >&2; exit 1; fi; dd of=${backing} seek=$4 oflag=seek_bytes conv=notrunc status=none`,
    ], { stdio: 'ignore' });
    cleanups.push(async () => void nbdkit.kill('SIGTERM'));
    await waitFor(() => fs.existsSync(sock), 10_000, 'nbdkit');
    const mountpoint = path.join(dir, 'fuse');
    fs.mkdirSync(mountpoint);
    const pidFile = path.join(dir, 'nbdfuse.pid');
    const nbdfuse = spawn('nbdfuse', ['-P', pidFile, path.join(mountpoint, 'disk'), `nbd+unix:///?socket=${sock}`], { stdio: 'ignore' });
    cleanups.push(async () => {
      await run('fusermount3', ['-u', '-z', mountpoint]);
      nbdfuse.kill('SIGTERM');
    });
    await waitFor(() => fs.existsSync(pidFile), 10_000, 'nbdfuse');
    const file = path.join(mountpoint, 'disk');
    await client.call(api.DeviceAttach, { path: file, name: 'flaky' });
    const nbd = await NbdClient.connect(daemon.nbdPath, 'flaky');
    const good = await nbd.pread(0, MiB);
    assert.ok(good.equals(fs.readFileSync(backing).subarray(0, MiB)));
    await assert.rejects(nbd.pread(bad.start, 4096), new RegExp(`\\b(${EIO}|EIO)\\b`), 'a read of the bad range fails with EIO');
    await assert.rejects(nbd.pwrite(bad.start + 4096, Buffer.alloc(4096, 1)).then(() => nbd.flush()), new RegExp(`\\b(${EIO}|EIO)\\b`), 'a write to the bad range fails with EIO');
    const data = randomBytes(64 * 1024);
    await nbd.pwrite(5 * MiB, data);
    await nbd.flush();
    assert.ok((await nbd.pread(5 * MiB, data.length)).equals(data), 'a good range still reads back what was written');
    // Copy-on-write of a chunk that cannot be read corrupts the snapshot, not the device.
    const { id } = await client.call(api.SnapshotCreate, { devices: ['flaky'], diffStorage: tmp.dir, limit: 64 * MiB, chunkMinimumShift: 16 });
    await client.call(api.SnapshotTake, { id });
    await nbd.pwrite(bad.end, Buffer.alloc(4096, 2)); // the next chunk is readable: kept, then written
    assert.equal((await client.call(api.SnapshotGetInfo, { device: 'flaky' })).errorCode, 0);
    // The bad chunk's original cannot be read: the snapshot breaks; the write itself meets EIO too.
    await assert.rejects(nbd.pwrite(bad.start, Buffer.alloc(4096, 3)), new RegExp(`\\b(${EIO}|EIO)\\b`));
    const info = await client.call(api.SnapshotGetInfo, { device: 'flaky' });
    assert.equal(info.errorCode, -EIO, 'the snapshot is corrupted by the unreadable original');
    await client.call(api.SnapshotDestroy, { id });
    nbd.close();
    assert.equal((await daemon.cli('list')).code, 0);
    await client.call(api.DeviceDetach, { device: 'flaky' });
  });

  it('clients that vanish at every point of a request harm nothing acknowledged', async () => {
    const file = path.join(tmp.dir, 'cut');
    fs.writeFileSync(file, Buffer.alloc(4 * MiB));
    await client.call(api.DeviceAttach, { path: file, name: 'cut' });
    const kept = randomBytes(MiB);
    const nbd = await NbdClient.connect(daemon.nbdPath, 'cut');
    await nbd.pwrite(0, kept);
    await nbd.flush();
    // One session's bytes: the handshake, a small write, a large (streamed) write, a read.
    const probe = await RawNbd.connect(daemon.nbdPath);
    const handshake: Buffer[] = [];
    const originalWrite = probe.socket.write.bind(probe.socket);
    probe.socket.write = ((b: Buffer) => {
      handshake.push(Buffer.from(b));
      return originalWrite(b);
    }) as typeof probe.socket.write;
    await probe.handshake('cut', { structured: true });
    probe.close();
    const small = Buffer.concat([encodeRequest(NBD.WRITE, 0, 1n, 2 * MiB, 4096), Buffer.alloc(4096, 7)]);
    const large = Buffer.concat([encodeRequest(NBD.WRITE, 0, 2n, 2 * MiB + 8192, 512 * 1024), Buffer.alloc(512 * 1024, 8)]);
    const read = encodeRequest(NBD.READ, 0, 3n, 0, 65536);
    const session = Buffer.concat([...handshake, small, large, read]);
    // Every byte of the handshake and of the small write; the large payload every 997 bytes (every
    // 61 with BLKSNAP_TEST_DURATION set: the long mode).
    const cuts = new Set<number>();
    const headed = Buffer.concat(handshake).length + small.length + 64;
    for (let i = 0; i < headed; i++) cuts.add(i);
    for (let i = 0; i < session.length; i += process.env.BLKSNAP_TEST_DURATION ? 61 : 997) cuts.add(i);
    const connect = async (): Promise<RawNbd> => {
      // Thousands of connections in a row can fill the listen backlog: wait for room, as a client would.
      for (;;) {
        try {
          return await RawNbd.connect(daemon.nbdPath);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
          await new Promise((r) => setTimeout(r, 10));
        }
      }
    };
    for (const at of [...cuts].sort((a, b) => a - b)) {
      const c = await connect();
      c.write(session.subarray(0, at));
      c.socket.destroy();
    }
    await new Promise((r) => setTimeout(r, 300));
    assert.ok((await nbd.pread(0, MiB)).equals(kept), 'acknowledged, flushed data is intact');
    nbd.close();
    assert.equal((await daemon.cli('list')).code, 0);
    await check('qemu-io', ['-f', 'raw', '-c', 'read -P 0 3M 64k', daemon.uri('cut')]);
    assert.doesNotMatch(daemon.log, /BUG/);
    await client.call(api.DeviceDetach, { device: 'cut' });
  });
});
