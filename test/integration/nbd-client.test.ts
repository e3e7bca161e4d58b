// The library's NBD client against another server (qemu-nbd): structured replies that answer a read
// with data and holes fill every byte of the buffer (it is not zeroed beforehand), also when the
// replies arrive cut in pieces of a few bytes (the client receives a read's data straight into its
// buffer and must switch between that and its queue at any byte).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { NbdClient } from '../../src/client/nbd-client.js';
import { missing, tempDir } from '../helpers/tools.js';

const MiB = 1 << 20;

describe('library NBD client', { skip: missing('qemu-nbd') }, () => {
  it('reads data and holes of a sparse file from qemu-nbd byte for byte, on buffers that were not zeroed, whole and in pieces', async () => {
    const tmp = tempDir();
    const file = path.join(tmp.dir, 'sparse.img');
    const socket = path.join(tmp.dir, 'nbd.sock');
    const data = randomBytes(MiB);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 8 * MiB);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, data, 0, data.length, 3 * MiB); // data at 3 MiB; holes around it
    fs.closeSync(fd);
    const server = spawn('qemu-nbd', ['-f', 'raw', '-k', socket, '-t', '-e', '4', file], { stdio: 'ignore' });
    // Between client and server: the server's bytes passed on in pieces of 1 to 40 bytes, one per turn of the event loop.
    const choppedSocket = path.join(tmp.dir, 'chopped.sock');
    const chopper = net.createServer((c) => {
      const up = net.connect(socket);
      c.pipe(up);
      let sending = Promise.resolve();
      up.on('data', (b: Buffer) => {
        sending = sending.then(async () => {
          for (let at = 0; at < b.length; ) {
            const n = 1 + Math.floor(Math.random() * 40);
            c.write(b.subarray(at, at + n));
            at += n;
            if (Math.random() < 0.3) await new Promise((r) => setImmediate(r));
          }
        });
      });
      c.on('close', () => up.destroy());
      up.on('close', () => c.destroy());
      // The server closes first after the client's disconnect: the pipe's last write may find it gone.
      c.on('error', () => up.destroy());
      up.on('error', () => c.destroy());
    });
    await new Promise<void>((r) => chopper.listen(choppedSocket, r));
    try {
      for (let i = 0; i < 100 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
      const expected = Buffer.alloc(3 * MiB);
      data.copy(expected, MiB);
      const client = await NbdClient.connect(`nbd+unix:///?socket=${socket}`);
      try {
        // Fill the process's free memory with non-zero bytes, so a buffer left unfilled would show.
        for (let i = 0; i < 64; i++) Buffer.allocUnsafeSlow(4 * MiB).fill(0xee);
        for (let round = 0; round < 8; round++) {
          const read = await client.read(2 * MiB, 3 * MiB);
          assert.ok(read.equals(expected), `round ${round}: holes read as zeros and data as written`);
        }
        // Into a buffer used before (as a backup reuses its read buffers): every byte is written again.
        const reused = Buffer.alloc(4 * MiB, 0xee);
        for (let round = 0; round < 2; round++) {
          const read = await client.read(2 * MiB, 3 * MiB, reused);
          assert.equal(read.buffer, reused.buffer, 'the read landed in the given buffer');
          assert.equal(read.length, 3 * MiB);
          assert.ok(read.equals(expected), `reused buffer, round ${round}`);
          assert.ok(reused.subarray(3 * MiB).every((b) => b === 0xee), 'nothing past the read was touched');
          reused.fill(0xee, 0, 3 * MiB);
        }
        await assert.rejects(client.read(0, 2 * MiB, Buffer.alloc(MiB)), { code: 'EINVAL' });
      } finally {
        await client.close();
      }
      const chopped = await NbdClient.connect(`nbd+unix:///?socket=${choppedSocket}`);
      try {
        // Several reads in flight, of data, holes and both, each answered in pieces.
        const ranges = Array.from({ length: 24 }, (_, i) => ({ offset: (i * 397 * 1024) % (7 * MiB), length: 1024 + ((i * 7919) % (256 * 1024)) }));
        const reads = await Promise.all(ranges.map((r) => chopped.read(r.offset, r.length)));
        const whole = Buffer.alloc(8 * MiB);
        data.copy(whole, 3 * MiB);
        reads.forEach((read, i) => {
          const r = ranges[i] as { offset: number; length: number };
          assert.ok(read.equals(whole.subarray(r.offset, r.offset + r.length)), `chopped read ${r.offset}+${r.length}`);
        });
      } finally {
        await chopped.close();
      }
    } finally {
      chopper.close();
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
      tmp.remove();
    }
  });
});

describe('library NBD client against a hostile server', () => {
  it('a reply chunk claiming more than any request needs ends the connection (EPROTO) instead of being buffered', async () => {
    const { TestDaemon } = await import('../helpers/daemon.js');
    const tmp = tempDir();
    const disk = path.join(tmp.dir, 'disk');
    fs.writeFileSync(disk, Buffer.alloc(MiB));
    const daemon = await TestDaemon.start(['--attach', disk]);
    // Passes the handshake through; answers the first BLOCK_STATUS itself: a chunk header claiming
    // 4 GiB, then junk for as long as the client keeps reading.
    const hostile = path.join(tmp.dir, 'hostile.sock');
    let junkSent = 0;
    const proxy = net.createServer((c) => {
      const up = net.connect(daemon.nbdPath);
      let isHijacked = false;
      c.on('data', (b: Buffer) => {
        const at = b.indexOf(Buffer.from([0x25, 0x60, 0x95, 0x13, 0, 0, 0, 7]));
        if (at < 0 || isHijacked) return void up.write(b);
        isHijacked = true;
        const reply = Buffer.alloc(20);
        reply.writeUInt32BE(0x668e33ef, 0);
        reply.writeUInt16BE(1, 4); // DONE
        reply.writeUInt16BE(5, 6); // BLOCK_STATUS
        b.copy(reply, 8, at + 8, at + 16); // the request's cookie
        reply.writeUInt32BE(0xfffffff0, 16);
        c.write(reply);
        const junk = Buffer.alloc(MiB, 0xab);
        const pump = (): void => {
          while (!c.destroyed && junkSent < 256 * MiB) {
            junkSent += junk.length;
            if (!c.write(junk)) return void c.once('drain', pump);
          }
          c.end();
        };
        pump();
      });
      up.on('data', (b: Buffer) => {
        if (!isHijacked) c.write(b);
      });
      c.on('error', () => up.destroy());
      c.on('close', () => up.destroy());
      up.on('error', () => c.destroy());
    });
    await new Promise<void>((r) => proxy.listen(hostile, r));
    try {
      const client = await NbdClient.connect(`nbd+unix:///disk?socket=${hostile}`, { metaContexts: ['base:allocation'] });
      await assert.rejects(client.blockStatus('base:allocation', 0, MiB), (e: NodeJS.ErrnoException) => e.code === 'EPROTO' && /claims a 4294967280-byte reply chunk/.test(e.message));
      await client.close().catch(() => undefined);
      assert.ok(junkSent < 64 * MiB, `the client stopped reading after ${junkSent / MiB} MiB`);
    } finally {
      proxy.close();
      await daemon.stop();
      tmp.remove();
    }
  });
});
