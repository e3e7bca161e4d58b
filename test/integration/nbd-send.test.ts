// Read replies the kernel sends from the page cache (sendfile): whole, in order, right, whatever the client does.
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { NbdClient } from '../helpers/nbd-client.js';
import { sparseFile, tempDir } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;

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
