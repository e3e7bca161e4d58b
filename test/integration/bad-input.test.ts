// Bad input on every socket: errors name the errno, the connection or the daemon goes on, nothing is lost.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { encodeRequest, ERR, NBD, RawNbd } from '../helpers/raw-nbd.js';
import { check, missing, sparseFile, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;

describe('bad input', () => {
  let daemon: TestDaemon;
  let tmp: { dir: string; remove: () => void };
  const size = 4 * MiB;

  before(async () => {
    tmp = tempDir();
    sparseFile(path.join(tmp.dir, 'rw'), size);
    sparseFile(path.join(tmp.dir, 'ro'), size);
    daemon = await TestDaemon.start(['--attach', path.join(tmp.dir, 'rw')]);
    await daemon.json('attach', '--device', path.join(tmp.dir, 'ro'), '--readonly');
  });
  after(async () => {
    await daemon?.stop();
    tmp?.remove();
  });

  async function session(name: string, structured = false): Promise<RawNbd> {
    const c = await RawNbd.connect(daemon.nbdPath);
    await c.handshake(name, { structured });
    return c;
  }

  it('reads and writes past the end get EINVAL/ENOSPC and the connection goes on', async () => {
    const c = await session('rw');
    assert.equal(c.size, size);
    c.request(NBD.READ, size - 10, 20);
    assert.equal((await c.simpleReply()).error, ERR.EINVAL);
    c.request(NBD.WRITE, size - 10, 20, 0, Buffer.alloc(20, 1));
    assert.equal((await c.simpleReply()).error, ERR.ENOSPC);
    c.request(NBD.WRITE_ZEROES, size, 1);
    assert.equal((await c.simpleReply()).error, ERR.ENOSPC);
    c.request(NBD.READ, 2n ** 63n, 1);
    assert.equal((await c.simpleReply()).error, ERR.EINVAL);
    c.request(NBD.READ, 0, 33 * MiB);
    assert.equal((await c.simpleReply()).error, ERR.EINVAL);
    // An oversized write's payload is consumed and refused, and the stream stays in step.
    c.request(NBD.WRITE, 0, 33 * MiB, 0, Buffer.alloc(33 * MiB, 9));
    assert.equal((await c.simpleReply()).error, ERR.EINVAL);
    c.request(NBD.READ, 0, 8, 1 << 9 /* unknown flag */);
    assert.equal((await c.simpleReply()).error, ERR.EINVAL);
    c.request(77, 0, 8);
    assert.equal((await c.simpleReply()).error, ERR.EINVAL);
    c.request(NBD.BLOCK_STATUS, 0, 8);
    assert.equal((await c.simpleReply()).error, ERR.EINVAL, 'block status without a meta context');
    // Still in step: a good write and read.
    c.request(NBD.WRITE, size - 4, 4, 0, Buffer.from('abcd'));
    assert.equal((await c.simpleReply()).error, 0);
    c.request(NBD.READ, size - 4, 4);
    const r = await c.simpleReply(4);
    assert.equal(r.error, 0);
    assert.equal(r.data.toString(), 'abcd');
    assert.equal(fs.readFileSync(path.join(tmp.dir, 'rw')).subarray(0, 8).every((b) => b === 0), true, 'nothing of the refused writes landed');
    c.request(NBD.DISC, 0, 0);
    assert.equal(await c.waitClosed(), true);
  });

  it('large write payloads in odd pieces, pipelined, land intact; a client gone mid-payload leaves at most what it sent', async () => {
    const c = await session('rw');
    // Three large writes sent as one stream cut at awkward places:
    // inside headers, inside payloads, and across request boundaries.
    const payloads = [Buffer.alloc(MiB, 0x11), Buffer.alloc(MiB - 512, 0x22), Buffer.alloc(256 * 1024 + 7, 0x33)];
    const offsets = [0, MiB, 2 * MiB + 512];
    const stream = Buffer.concat(payloads.flatMap((p, i) => [encodeRequest(NBD.WRITE, 0, BigInt(100 + i), offsets[i] as number, p.length), p]));
    for (let at = 0, step = 1; at < stream.length; at += step, step = (step * 7919) % 262_139 || 1) {
      c.write(stream.subarray(at, at + step));
      if (step % 3 === 0) await new Promise((r) => setImmediate(r));
    }
    for (let i = 0; i < 3; i++) assert.equal((await c.simpleReply()).error, 0);
    c.request(NBD.READ, MiB - 8, 16);
    const r = await c.simpleReply(16);
    assert.deepEqual(r.data, Buffer.concat([Buffer.alloc(8, 0x11), Buffer.alloc(8, 0x22)]));
    const file = fs.readFileSync(path.join(tmp.dir, 'rw'));
    for (const [i, p] of payloads.entries()) assert.ok(file.subarray(offsets[i], (offsets[i] as number) + p.length).equals(p), `write ${i} intact`);
    // Half a payload, then the client goes. A large write lands as it arrives (as a disk that lost
    // power mid-write, the range may be torn): at most the bytes that came, from the start, none
    // after them; the daemon serves the next one.
    const gone = await session('rw');
    gone.write(encodeRequest(NBD.WRITE, 0, 1n, 3 * MiB, MiB - 4096)); // the export's last 4 bytes hold 'abcd'
    gone.write(Buffer.alloc(MiB / 2, 0x44));
    await new Promise((r) => setTimeout(r, 50));
    gone.close();
    assert.equal(await gone.waitClosed(), true);
    const next = await session('rw');
    next.request(NBD.READ, 3 * MiB, MiB - 4096);
    const torn = (await next.simpleReply(MiB - 4096)).data;
    const landed = torn.indexOf(0);
    assert.ok(landed >= 0 && landed <= MiB / 2, `landed ${landed} bytes of the ${MiB / 2} sent`);
    assert.ok(torn.subarray(0, landed).every((x) => x === 0x44) && torn.subarray(landed).every((x) => x === 0), 'a prefix of what was sent, nothing else');
    next.close();
    c.close();
  });

  it('write, trim and zero on a read-only export get EPERM', async () => {
    const c = await session('ro');
    assert.ok(c.transmissionFlags & 2, 'READ_ONLY flag');
    c.request(NBD.WRITE, 0, 4, 0, Buffer.from('abcd'));
    assert.equal((await c.simpleReply()).error, ERR.EPERM);
    c.request(NBD.TRIM, 0, 4096);
    assert.equal((await c.simpleReply()).error, ERR.EPERM);
    c.request(NBD.WRITE_ZEROES, 0, 4096);
    assert.equal((await c.simpleReply()).error, ERR.EPERM);
    c.request(NBD.READ, 0, 4);
    assert.equal((await c.simpleReply(4)).error, 0);
    c.close();
    assert.equal(fs.readFileSync(path.join(tmp.dir, 'ro')).subarray(0, 4).every((b) => b === 0), true);
  });

  it('structured replies carry errors with a message', async () => {
    const c = await session('rw', true);
    c.request(NBD.READ, size, 1);
    const h = await c.read(20);
    assert.ok(h);
    assert.equal(h.readUInt32BE(0), 0x668e33ef);
    assert.equal(h.readUInt16BE(6), 0x8001);
    const payload = await c.read(h.readUInt32BE(16));
    assert.ok(payload);
    assert.equal(payload.readUInt32BE(0), ERR.EINVAL);
    assert.match(payload.subarray(6).toString(), /EINVAL: read: range .* lies past the end/);
    c.close();
  });

  it('a malformed handshake or garbage after it ends only that connection', async () => {
    const good = await session('rw');
    const bad1 = await RawNbd.connect(daemon.nbdPath);
    await bad1.read(18);
    bad1.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.equal(await bad1.waitClosed(), true);
    const bad2 = await RawNbd.connect(daemon.nbdPath);
    await bad2.read(18);
    bad2.write(Buffer.from([0, 0, 0, 1]));
    bad2.write(Buffer.alloc(64, 0xff));
    assert.equal(await bad2.waitClosed(), true);
    const bad3 = await session('rw');
    bad3.write(Buffer.from('this is not an NBD request header at all'));
    assert.equal(await bad3.waitClosed(), true);
    const bad4 = await RawNbd.connect(daemon.nbdPath);
    bad4.close();
    // The first connection and new ones still work.
    good.request(NBD.READ, 0, 16);
    assert.equal((await good.simpleReply(16)).error, 0);
    good.close();
    if (!missing('qemu-io')) await check('qemu-io', ['-f', 'raw', '-c', 'read 0 4096', daemon.uri('rw')]);
    assert.ok(daemon.isAlive);
  });

  it('a client that sends options without reading the replies does not grow the daemon', async () => {
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${daemon.child.pid}/status`, 'utf8'))?.[1]) * 1024;
    const before = rss();
    const c = await RawNbd.connect(daemon.nbdPath);
    c.socket.pause(); // never read
    const list = Buffer.alloc(16);
    list.writeBigUInt64BE(0x49484156454f5054n, 0);
    list.writeUInt32BE(3, 8);
    const burst = Buffer.concat([Buffer.from([0, 0, 0, 1]), ...new Array<Buffer>(65536).fill(list)]);
    // 1M options (16 MiB) would make ~100 MiB of replies if the daemon kept them all in memory.
    for (let i = 0; i < 16 && !c.socket.destroyed; i++) {
      if (!c.socket.write(i === 0 ? burst : burst.subarray(4))) await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(rss() - before < 48 * MiB, `RSS grew by ${((rss() - before) / MiB).toFixed(0)} MiB`);
    if (!missing('qemu-io')) await check('qemu-io', ['-f', 'raw', '-c', 'read 0 4096', daemon.uri('rw')]);
    c.close();
  });

  it('detach while a client is connected ends that client\'s session, not the daemon', async () => {
    const file = sparseFile(path.join(tmp.dir, 'going'), MiB);
    await daemon.json('attach', '--device', file);
    const c = await session('going');
    c.request(NBD.WRITE, 0, 4, 0, Buffer.from('last'));
    assert.equal((await c.simpleReply()).error, 0);
    await daemon.json('detach', '--device', 'going');
    assert.equal(await c.waitClosed(), true);
    assert.equal(fs.readFileSync(file).subarray(0, 4).toString(), 'last');
    assert.ok(daemon.isAlive);
  });

  it('an unknown export is refused in the handshake', async () => {
    const c = await RawNbd.connect(daemon.nbdPath);
    await assert.rejects(c.handshake('nope'), /0x80000006/);
    c.close();
  });

  it('CLI: unknown device ENOENT, same store twice EBUSY, bad ranges EINVAL', async () => {
    let r = await daemon.cli('cbtinfo', '--device', 'missing');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /ENOENT: no attached device named or at 'missing'/);
    r = await daemon.cli('attach', '--device', path.join(tmp.dir, 'rw'), '--name', 'second');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /EBUSY/);
    r = await daemon.cli('attach', '--device', path.join(tmp.dir, 'no-such-file'));
    assert.match(r.stderr, /ENOENT/);
    r = await daemon.cli('attach', '--device', tmp.dir);
    assert.match(r.stderr, /EINVAL: .* is neither a regular file nor a block device/);
    r = await daemon.cli('markdirtyblock', '--device', 'rw', '--range', '1:x');
    assert.match(r.stderr, /EINVAL: invalid range '1:x'/);
    r = await daemon.cli('markdirtyblock', '--device', 'rw', '--range', `${size / 512}:1`);
    assert.match(r.stderr, /EINVAL: markdirtyblock: range .* past the end/);
    r = await daemon.cli('attach', '--device', path.join(tmp.dir, 'ro'), '--name', 'bad name!');
    assert.match(r.stderr, /EBUSY|EINVAL/);
  });

  it('invalid control requests get EINVAL with a message; the daemon keeps serving', async () => {
    const lines = [
      'not json',
      '[1,2,3]',
      '{"jsonrpc":"2.0","id":1}',
      '{"jsonrpc":"2.0","id":2,"method":"no.such"}',
      '{"jsonrpc":"2.0","id":3,"method":"device.attach","params":{"path":5}}',
      '{"jsonrpc":"2.0","id":4,"method":"cbt.read","params":{"device":"rw","offset":-1,"length":1}}',
      '{"jsonrpc":"2.0","id":5,"method":"cbt.markDirty","params":{"device":"rw","ranges":[{"sector":0}]}}',
      '{"jsonrpc":"2.0","id":6,"method":"device.list","params":"x"}',
      '{"jsonrpc":"2.0","id":7,"method":"constructor"}',
      '{"jsonrpc":"2.0","id":8,"method":"__proto__"}',
    ];
    const replies = await controlExchange(daemon.controlPath, `${lines.join('\n')}\n`, lines.length);
    assert.equal(replies.length, lines.length);
    for (const r of replies) {
      const reply = r as { error?: { code: number; message: string; data: { errno: string } } };
      assert.equal(reply.error?.data.errno, 'EINVAL', JSON.stringify(r));
      assert.equal(reply.error?.code, -22);
      assert.ok((reply.error?.message.length ?? 0) > 10);
    }
    // An endless line is cut off at the bound, not buffered.
    const big = await controlExchange(daemon.controlPath, 'x'.repeat(2 * MiB), 1);
    assert.equal((big[0] as { error: { data: { errno: string } } }).error.data.errno, 'EINVAL');
    const list = await daemon.json<{ devices: unknown[] }>('list');
    assert.equal(list.devices.length, 2);
  });

  it('one control connection runs at most 64 requests at once; the rest wait', async () => {
    const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'rw', '--file', tmp.dir, '--limit', '1M');
    const waits = Array.from({ length: 100 }, (_, i) => `{"jsonrpc":"2.0","id":${i},"method":"snapshot.waitEvent","params":{"id":"${id}","timeoutMs":60000}}`);
    const version = '{"jsonrpc":"2.0","id":"v","method":"version"}';
    const exchange = controlExchange(daemon.controlPath, `${[...waits, version].join('\n')}\n`, 101);
    await new Promise((r) => setTimeout(r, 300));
    // Destroying the snapshot ends the 64 waits with ESRCH; then the rest and version are read.
    await daemon.json('snapshot_destroy', '--id', id);
    const replies = (await exchange) as Array<{ id: number | string; error?: { data: { errno: string } } }>;
    assert.equal(replies.length, 101);
    // version came behind 100 waits: it was answered only after the first 64 had ended.
    assert.ok(replies.findIndex((r) => r.id === 'v') >= 64);
    assert.ok(replies.filter((r) => r.id !== 'v').every((r) => r.error?.data.errno === 'ESRCH'));
  });
});

describe('control socket backpressure', () => {
  it('a client that never reads its cbt.read replies does not grow the daemon; the replies all come once it reads', async () => {
    const tmp = tempDir();
    // 8 TiB sparse: 4 MiB tracking blocks, 2,097,152 of them, so one whole-map cbt.read answers 2.8 MB of base64.
    const file = sparseFile(path.join(tmp.dir, 'huge'), 8 * 1024 * 1024 * MiB);
    const daemon = await TestDaemon.start(['--attach', file]);
    try {
      const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${daemon.child.pid}/status`, 'utf8'))?.[1]) * 1024;
      const before = rss();
      const count = 120;
      const line = (i: number) => `{"jsonrpc":"2.0","id":${i},"method":"cbt.read","params":{"device":"huge","offset":0,"length":2097152}}`;
      const s = net.createConnection(daemon.controlPath);
      await new Promise((r) => s.once('connect', r));
      s.pause(); // never read, for now
      s.write(`${Array.from({ length: count }, (_, i) => line(i)).join('\n')}\n`);
      await new Promise((r) => setTimeout(r, 3000));
      const grown = rss() - before;
      assert.ok(grown < 64 * MiB, `RSS grew by ${(grown / MiB).toFixed(0)} MiB while ${count} replies of 2.8 MB went unread`);
      // Another connection is served meanwhile.
      assert.equal((await daemon.cli('list')).code, 0);
      // Reading now brings every reply, whole: each line a 2 MiB map.
      let received = 0;
      let lineBytes = 0;
      await new Promise<void>((resolve, reject) => {
        s.on('data', (d: Buffer) => {
          let from = 0;
          for (let i = d.indexOf(10); i >= 0; i = d.indexOf(10, i + 1)) {
            lineBytes += i - from;
            assert.ok(lineBytes > 2_796_000 && lineBytes < 2_797_000, `reply ${received} has ${lineBytes} bytes`);
            lineBytes = 0;
            from = i + 1;
            if (++received === count) return resolve();
          }
          lineBytes += d.length - from;
        });
        s.on('error', reject);
        s.resume();
      });
      s.destroy();
      assert.equal(received, count);
    } finally {
      await daemon.stop();
      tmp.remove();
    }
  });
});

function controlExchange(socketPath: string, text: string, expected: number): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(socketPath);
    let buffer = '';
    const replies: unknown[] = [];
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      buffer += d;
      for (let i = buffer.indexOf('\n'); i >= 0; i = buffer.indexOf('\n')) {
        replies.push(JSON.parse(buffer.slice(0, i)));
        buffer = buffer.slice(i + 1);
      }
      if (replies.length >= expected) {
        s.destroy();
        resolve(replies);
      }
    });
    s.on('error', reject);
    s.on('close', () => resolve(replies));
    s.write(text);
  });
}
