// Read replies the kernel sends from the page cache (sendfile): whole, in order, right, whatever the
// client does; and image reads of ranges not in the page cache, which go past it (O_DIRECT, or
// splice from the disk through a pipe into the socket).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isRangeCached } from '../../src/os/libc.js';
import { TestDaemon } from '../helpers/daemon.js';
import { NbdClient } from '../helpers/nbd-client.js';
import { check, sparseFile, tempDir } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 96 * MiB; // 64 MiB on are read by the splice test alone

/** Every 4 KiB block holds its own offset and a generation number: any misplaced byte shows. */
function pattern(offset: number, length: number, generation: number): Buffer {
  const b = Buffer.alloc(length);
  for (let at = 0; at < length; at += 8) {
    b.writeUInt32LE((offset + at) >>> 3, at);
    b.writeUInt32LE(generation, at + 4);
  }
  return b;
}

describe('read replies sent by the kernel', () => {
  let daemon: TestDaemon;
  let tmp: { dir: string; remove: () => void };
  let client: NbdClient;

  before(async () => {
    tmp = tempDir();
    sparseFile(path.join(tmp.dir, 'disk'), SIZE);
    daemon = await TestDaemon.start(['--attach', path.join(tmp.dir, 'disk')]);
    client = await NbdClient.connect(daemon.nbdPath, 'disk');
    // Written through the daemon, so the whole disk is in the page cache: large reads go by sendfile.
    for (let off = 0; off < SIZE; off += 4 * MiB) await client.pwrite(off, pattern(off, 4 * MiB, 1));
  });
  after(async () => {
    client?.close();
    await daemon?.stop();
    tmp?.remove();
  });

  it('stay whole and in order when the client stops reading with far more in flight than the socket holds', async () => {
    // 48 MiB of replies against an 8 MiB socket buffer: most large replies are cut short by a full
    // socket and finished later, while small replies (copied) and writes complete around them.
    client.pause();
    const reads: Array<Promise<{ offset: number; data: Buffer; length: number }>> = [];
    for (let i = 0; i < 48; i++) {
      const offset = ((i * 7) % 60) * MiB + (i % 3) * 4 * KiB;
      const length = i % 4 === 3 ? 4 * KiB : MiB + (i % 5) * 64 * KiB;
      reads.push(client.pread(offset, length).then((data) => ({ offset, data, length })));
    }
    const writes = [62, 63].map((m) => client.pwrite(m * MiB, pattern(m * MiB, MiB, 2)));
    await new Promise((r) => setTimeout(r, 300));
    client.resume();
    for (const r of await Promise.all(reads)) {
      assert.equal(r.data.length, r.length);
      assert.ok(r.data.equals(pattern(r.offset, r.length, 1)), `read ${r.offset}+${r.length} has wrong bytes`);
    }
    await Promise.all(writes);
    const back = await client.pread(62 * MiB, 2 * MiB);
    assert.ok(back.equals(pattern(62 * MiB, 2 * MiB, 2)));
  });

  it('large writes whose header is read while the daemon holds back keep the request stream in step', async () => {
    // The daemon stops reading while replies wait behind a reply cut short; the writes queued
    // behind the reads are parsed when it resumes, outside a socket read. Their payloads must
    // still be taken as payloads (it once read them as request headers: 'bad request magic').
    for (let round = 0; round < 8; round++) {
      client.pause();
      const reads = Array.from({ length: 40 }, (_, i) => client.pread(((i * 5 + round) % 40) * MiB, MiB + 4 * KiB * i));
      const written: Array<{ offset: number; data: Buffer }> = [];
      for (let i = 0; i < 4; i++) {
        const offset = 42 * MiB + round * 2 * MiB + i * 512 * KiB + i * 512;
        written.push({ offset, data: pattern(offset, 300 * KiB + i * 333 * KiB, 10 + round) });
      }
      // Each write is whole on its own: later ones overlap earlier ones only past their end.
      const writes = written.map((x) => client.pwrite(x.offset, x.data.subarray(0, Math.min(x.data.length, 512 * KiB))));
      await new Promise((r) => setTimeout(r, 150));
      client.resume();
      await Promise.all([...reads, ...writes]);
      for (const x of written) {
        const length = Math.min(x.data.length, 512 * KiB);
        assert.ok((await client.pread(x.offset, length)).equals(x.data.subarray(0, length)), `round ${round}: write at ${x.offset} did not land whole`);
      }
    }
    assert.ok(daemon.isAlive);
    assert.doesNotMatch(daemon.log, /bad request magic/);
  });

  it('an image read sent by the kernel keeps the bytes of the take when a device write lands on its chunks before the client has read it', async () => {
    // Sendfile hands the socket references to the device's page-cache pages; a copy-on-write keeps
    // the original elsewhere, then the device write changes those very pages. Unless that write
    // waits until the client has read the reply, the image reader would get the new bytes.
    const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'disk', '--file', tmp.dir, '--limit', '64M');
    await daemon.json('snapshot_take', '--id', id);
    const image = await NbdClient.connect(daemon.nbdPath, 'disk-image');
    try {
      const ranges = Array.from({ length: 16 }, (_, i) => ({ offset: 8 * MiB + i * 512 * KiB, length: 256 * KiB }));
      image.pause();
      const reads = ranges.map((r) => image.pread(r.offset, r.length));
      await new Promise((r) => setTimeout(r, 150)); // the replies wait in the socket, unread
      let writesDoneAt = 0;
      const writes = Promise.all(ranges.map((r) => client.pwrite(r.offset, pattern(r.offset, 64 * KiB, 3)))).then(() => {
        writesDoneAt = performance.now();
      });
      await new Promise((r) => setTimeout(r, 300));
      const resumedAt = performance.now();
      image.resume();
      const data = await Promise.all(reads);
      data.forEach((d, i) => {
        const r = ranges[i] as { offset: number; length: number };
        assert.ok(d.equals(pattern(r.offset, r.length, 1)), `image read at ${r.offset} shows bytes written after the take`);
      });
      await writes;
      // The writes waited for the image's client to read (proof that its replies went by sendfile).
      assert.ok(writesDoneAt >= resumedAt, 'the device writes landed while image replies sent by reference were unread');
      for (const r of ranges) {
        assert.ok((await image.pread(r.offset, r.length)).equals(pattern(r.offset, r.length, 1)), 'the image keeps the take');
        assert.ok((await client.pread(r.offset, 64 * KiB)).equals(pattern(r.offset, 64 * KiB, 3)), 'the device has the write');
      }
    } finally {
      image.close();
      await daemon.json('snapshot_destroy', '--id', id);
    }
  });

  it('an image read of ranges not in the page cache reads them past it (O_DIRECT): right bytes, and no page of the device cached', async () => {
    // A backup reads an image once. Through the page cache every page it reads is a new one (on a
    // VM whose freed memory goes back to the host, a fault in the host each); a try at once from
    // the cache (RWF_NOWAIT) that misses starts read-ahead, and the sendfile of what came in keeps
    // it going, so the whole device would pass through the page cache.
    const file = path.join(tmp.dir, 'disk');
    const fd = fs.openSync(file, 'r');
    const from = 20 * MiB; // bytes no other test here writes
    const to = 40 * MiB;
    const cachedPages = (): number => {
      let n = 0;
      for (let p = from; p < to; p += 4 * KiB) if (isRangeCached(fd, p, 4 * KiB)) n++;
      return n;
    };
    const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'disk', '--file', tmp.dir, '--limit', '64M');
    await daemon.json('snapshot_take', '--id', id);
    const image = await NbdClient.connect(daemon.nbdPath, 'disk-image');
    try {
      fs.readSync(fd, Buffer.alloc(4 * KiB), 0, 4 * KiB, from);
      assert.ok(cachedPages() > 0, 'a page read through the cache shows as cached (the check works here)');
      fs.fsyncSync(fd);
      await check('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
      assert.equal(cachedPages(), 0, 'dd dropped the device from the page cache');
      // As a backup reads: 1 MiB runs, many in flight; and reads of odd offsets and lengths.
      const ranges = Array.from({ length: 16 }, (_, i) => ({ offset: from + i * MiB, length: MiB }));
      ranges.push({ offset: from + 16 * MiB + 100, length: 300 * KiB + 7 }, { offset: from + 17 * MiB + 4 * KiB, length: 4 * KiB }, { offset: from + 18 * MiB + 3, length: 5 });
      const data = await Promise.all(ranges.map((r) => image.pread(r.offset, r.length)));
      data.forEach((d, i) => {
        const r = ranges[i] as { offset: number; length: number };
        const start = r.offset - (r.offset % 8);
        const want = pattern(start, Math.ceil((r.offset + r.length - start) / 8) * 8, 1).subarray(r.offset - start, r.offset - start + r.length);
        assert.ok(d.equals(want), `image read at ${r.offset}+${r.length} has wrong bytes`);
      });
      await new Promise((r) => setTimeout(r, 100)); // read-ahead, had any been started, lands meanwhile
      assert.equal(cachedPages(), 0, 'the image reads brought device pages into the page cache');
    } finally {
      image.close();
      fs.closeSync(fd);
      await daemon.json('snapshot_destroy', '--id', id);
    }
  });

  it('image reads spliced from the disk (past the page cache, through pipes) keep the take while device writes land on their chunks, and stay whole when the client stops reading', async () => {
    // splice moves the disk's bytes into the pipe's own pages, so a write after it cannot reach them;
    // a copy-on-write of a chunk still being read must wait for the read (its chunks are pinned), or
    // the pipe would get the write's bytes. 72 MiB of replies pile up against an 8 MiB socket buffer:
    // replies cut short finish as copies out of their pipes, and replies waiting behind them too.
    const file = path.join(tmp.dir, 'disk');
    const pipes = (): number => fs.readdirSync(`/proc/${daemon.child.pid}/fd`).filter((f) => {
      try {
        return fs.readlinkSync(`/proc/${daemon.child.pid}/fd/${f}`).startsWith('pipe:');
      } catch {
        return false;
      }
    }).length;
    const pipesBefore = pipes();
    for (let round = 0; round < 4; round++) {
      const base = 64 * MiB + round * 8 * MiB;
      const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'disk', '--file', tmp.dir, '--limit', '64M');
      await daemon.json('snapshot_take', '--id', id);
      const image = await NbdClient.connect(daemon.nbdPath, 'disk-image');
      try {
        const fd = fs.openSync(file, 'r');
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        await check('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
        image.pause();
        // Passes over the round's 8 MiB: 1 MiB replies, then 64 KiB ones eight times over (the thread
        // pool has a long queue of them).
        const ranges = [...Array.from({ length: 8 }, (_, i) => ({ offset: base + i * MiB, length: MiB })), ...Array.from({ length: 8 * 128 }, (_, i) => ({ offset: base + (i % 128) * 64 * KiB, length: 64 * KiB }))];
        const reads = ranges.map((r) => image.pread(r.offset, r.length));
        const written = Array.from({ length: 8 }, (_, i) => base + 6 * MiB + i * 256 * KiB + (i % 4) * 64 * KiB);
        if (round % 2 === 0) {
          await new Promise((r) => setTimeout(r, 50)); // the splices are done: the pipes hold their own pages
        } else {
          // The writes race the splices still queued for the thread pool: their ranges cached, so the
          // copy-on-write and the write land at once, on the event loop, unless pinned chunks hold them.
          const fd = fs.openSync(file, 'r');
          for (const at of written) fs.readSync(fd, Buffer.alloc(64 * KiB), 0, 64 * KiB, at);
          fs.closeSync(fd);
        }
        // Not awaited before the resume: reads the daemon takes up only now find those ranges cached
        // and go by sendfile, and a write to what was sent waits until the client has read it.
        const writes = Promise.all(written.map((at) => client.pwrite(at, pattern(at, 64 * KiB, 4 + round))));
        await new Promise((r) => setTimeout(r, 100));
        image.resume();
        const data = await Promise.all(reads);
        await writes;
        data.forEach((d, i) => {
          const r = ranges[i] as { offset: number; length: number };
          assert.ok(d.equals(pattern(r.offset, r.length, 1)), `round ${round}: image read at ${r.offset}+${r.length} shows bytes other than the take's`);
        });
        for (const at of written) assert.ok((await client.pread(at, 64 * KiB)).equals(pattern(at, 64 * KiB, 4 + round)), 'the device has the write');
      } finally {
        image.close();
        await daemon.json('snapshot_destroy', '--id', id);
      }
    }
    // The reads took pipes for their splices (the daemon keeps them for the next ones).
    assert.ok(pipes() > pipesBefore, `the daemon holds ${pipes()} pipes, as before the reads (${pipesBefore}): nothing was spliced`);
    assert.ok(daemon.isAlive);
  });

  it('ends the connection cleanly when the client goes away mid-reply, and serves the next client', async () => {
    const quitter = await NbdClient.connect(daemon.nbdPath, 'disk');
    quitter.pause();
    const pending = Array.from({ length: 32 }, (_, i) => quitter.pread(i * MiB, MiB).catch(() => null));
    await new Promise((r) => setTimeout(r, 100));
    quitter.close();
    await Promise.all(pending);
    const again = await NbdClient.connect(daemon.nbdPath, 'disk');
    try {
      assert.ok((await again.pread(5 * MiB, 2 * MiB)).equals(pattern(5 * MiB, 2 * MiB, 1)));
    } finally {
      again.close();
    }
    assert.ok(daemon.isAlive);
  });
});
