// The FUSE readers' cached reads by splice: a pipe holds references to the device's pages, not
// copies, so an image's chunks must stay pinned until the pipe has been moved on; pieces come from
// the device (untouched chunks) and the difference storage (kept ones); a miss sends nothing.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { CachedChunk, type ImageReadGate } from '../../../src/core/block-device.js';
import { ChunkState } from '../../../src/core/chunk-map.js';
import { threadPinOf } from '../../../src/core/origin-readers.js';
import { type CachedReads, readFromCache, spliceFromCache, spliceReply } from '../../../src/frontends/fuse/cached-read.js';
import { adviseNoReadAhead, bytesReadable, isRangeCached } from '../../../src/os/libc.js';
import { closePipe, drainPipe, emptyPipe, openPipe, type SplicePipe } from '../../../src/os/splice.js';
import { tempDir } from '../../helpers/tools.js';

const CHUNK = 64 * 1024;
/** No reply header: the pipe then holds exactly the range. */
const EMPTY = new Uint8Array(0);
const CHUNKS = 16;

interface Setup {
  cached: CachedReads;
  gate: ImageReadGate;
  device: Buffer;
  kept: Buffer;
  deviceFd: number;
  pipe: SplicePipe;
  done: () => void;
}

/** A device file and a difference storage file, both cached (just written), and an image gate over them with every chunk untouched. */
function setUp(): Setup {
  const t = tempDir('blksnap-cached-read-');
  const device = randomBytes(CHUNKS * CHUNK);
  const kept = randomBytes(CHUNKS * CHUNK);
  fs.writeFileSync(path.join(t.dir, 'device'), device);
  fs.writeFileSync(path.join(t.dir, 'diff'), kept);
  const deviceFd = fs.openSync(path.join(t.dir, 'device'), 'r+');
  const diffFd = fs.openSync(path.join(t.dir, 'diff'), 'r');
  const gate: ImageReadGate = {
    state: new Uint8Array(new SharedArrayBuffer(CHUNKS)),
    pins: new Int32Array(new SharedArrayBuffer(4 * 8)),
    chunkShift: 16,
    slot: new Uint32Array(new SharedArrayBuffer(4 * CHUNKS)),
    diffFd,
    isDiffCheckedFirst: true,
    isOriginCheckedFirst: true,
    cachedChunks: new Uint8Array(new SharedArrayBuffer(CHUNKS)),
  };
  const pipe = openPipe(1024 * 1024);
  assert.ok(pipe && typeof pipe === 'object', 'a 1 MiB pipe');
  return {
    cached: { fd: deviceFd, size: device.length, image: gate },
    gate,
    device,
    kept,
    deviceFd,
    pipe,
    done: () => {
      closePipe(pipe);
      fs.closeSync(deviceFd);
      fs.closeSync(diffFd);
      t.remove();
    },
  };
}

/**
 * A copy-on-write write as the gate's contract has it: it lands on an untouched chunk only when no
 * thread pins that chunk (the core keeps the original first, then waits for the pins). Returns whether it landed now.
 */
function writeHonouringPins(s: Setup, offset: number, data: Buffer): boolean {
  if (Atomics.load(s.gate.pins, threadPinOf(s.gate.pins, Math.floor(offset / CHUNK))) !== 0) return false;
  fs.writeSync(s.deviceFd, data, 0, data.length, offset);
  return true;
}

describe('FUSE cached reads by splice', () => {
  it('an image chunk stays pinned until the pipe has been moved on: a write to it waits, and the reply holds the take', () => {
    const s = setUp();
    try {
      const offset = 3 * CHUNK;
      const length = 2 * CHUNK;
      const newer = randomBytes(4096);
      let landedDuringSend: boolean | null = null;
      const reply = Buffer.alloc(length);
      const sent = spliceFromCache(s.cached, s.pipe, EMPTY, offset, length, () => {
        // A write racing the reply, after the pages are in the pipe and before they are copied out of it.
        landedDuringSend = writeHonouringPins(s, offset + CHUNK + 8192, newer);
        drainPipe(s.pipe, reply);
        return true;
      });
      assert.equal(sent, true);
      assert.equal(landedDuringSend, false, 'the write waited for the pin');
      assert.ok(reply.equals(s.device.subarray(offset, offset + length)), 'the reply holds the bytes at the take');
      assert.equal(writeHonouringPins(s, offset + CHUNK + 8192, newer), true, 'the pins are given back after the send');
      for (let i = 1; i < s.gate.pins.length; i++) assert.equal(Atomics.load(s.gate.pins, i), 0);
    } finally {
      s.done();
    }
  });

  it('puts the header first, then untouched chunks from the device and kept ones from the difference storage, as a read into memory gives them', () => {
    const s = setUp();
    try {
      // Chunk 5 kept in slot 9, chunk 6 untouched, chunk 7 kept in slot 2; the range starts and ends inside chunks.
      s.gate.slot[5] = 9;
      s.gate.slot[7] = 2;
      Atomics.store(s.gate.state, 5, ChunkState.Stored);
      Atomics.store(s.gate.state, 7, ChunkState.Stored);
      const offset = 5 * CHUNK + 12 * 1024;
      const length = 2 * CHUNK + 20 * 1024;
      const expected = Buffer.concat([
        s.kept.subarray(9 * CHUNK + 12 * 1024, 10 * CHUNK),
        s.device.subarray(6 * CHUNK, 7 * CHUNK),
        s.kept.subarray(2 * CHUNK, 2 * CHUNK + 32 * 1024),
      ]);
      assert.equal(expected.length, length);
      const header = Buffer.from('a reply header: ');
      const spliced = Buffer.alloc(header.length + length);
      const moveOn = (): boolean => {
        drainPipe(s.pipe, spliced);
        return true;
      };
      assert.equal(spliceFromCache(s.cached, s.pipe, header, offset, length, moveOn), true);
      assert.ok(spliced.equals(Buffer.concat([header, expected])), 'the header, then the range');
      const copied = Buffer.alloc(length);
      assert.equal(readFromCache(s.cached, copied, offset), true);
      assert.ok(copied.equals(expected), 'copied');
    } finally {
      s.done();
    }
  });

  it('sends nothing for a chunk being copied, a closed image, a failed or throwing send, or a range reaching the end', () => {
    const s = setUp();
    try {
      const never = (): boolean => assert.fail('nothing may be sent');
      Atomics.store(s.gate.state, 2, ChunkState.Copying);
      assert.equal(spliceFromCache(s.cached, s.pipe, EMPTY, CHUNK, 2 * CHUNK, never), false, 'a chunk being copied');
      emptyPipe(s.pipe, Buffer.alloc(CHUNK));
      Atomics.store(s.gate.state, 2, ChunkState.Untouched);
      Atomics.store(s.gate.pins, 0, 1);
      assert.equal(spliceFromCache(s.cached, s.pipe, EMPTY, CHUNK, CHUNK, never), false, 'a closed image');
      Atomics.store(s.gate.pins, 0, 0);
      assert.equal(spliceFromCache(s.cached, s.pipe, EMPTY, CHUNK, CHUNK, () => false), false, 'a failed send');
      emptyPipe(s.pipe, Buffer.alloc(CHUNK));
      assert.throws(() => spliceFromCache(s.cached, s.pipe, EMPTY, CHUNK, CHUNK, () => assert.fail('ENODEV')), /ENODEV/, 'a send that throws');
      emptyPipe(s.pipe, Buffer.alloc(CHUNK));
      assert.equal(spliceFromCache(s.cached, s.pipe, EMPTY, (CHUNKS - 1) * CHUNK, 2 * CHUNK, never), false, 'past the end');
      for (let i = 1; i < s.gate.pins.length; i++) assert.equal(Atomics.load(s.gate.pins, i), 0, 'no pin left behind');
    } finally {
      s.done();
    }
  });

  it('a reply by splice that its target refuses, or takes only in part, leaves nothing in the pipe for the next one', () => {
    const s = setUp();
    const target = openPipe(1024 * 1024);
    const narrow = openPipe(4096);
    assert.ok(target && typeof target === 'object' && narrow && typeof narrow === 'object');
    const readOnly = fs.openSync(path.join(path.dirname(fs.readlinkSync(`/proc/self/fd/${s.deviceFd}`)), 'device'), 'r');
    const scratch = Buffer.alloc(CHUNK);
    const header = Buffer.from('a reply header: ');
    try {
      // Refused with an error (EBADF: not open for writing), as /dev/fuse refuses an interrupted request.
      assert.equal(spliceReply(s.cached, s.pipe, header, 2 * CHUNK, CHUNK, readOnly, scratch), false);
      assert.equal(bytesReadable(s.pipe.readFd), 0, 'the pipe emptied after a splice that threw');
      // Taken in part: a target with room for one page.
      assert.equal(spliceReply(s.cached, s.pipe, header, 2 * CHUNK, CHUNK, narrow.writeFd, scratch), false);
      assert.equal(bytesReadable(s.pipe.readFd), 0, 'the pipe emptied after a short move');
      // The next reply is whole and alone in its target.
      assert.equal(spliceReply(s.cached, s.pipe, header, 4 * CHUNK, CHUNK, target.writeFd, scratch), true);
      const got = Buffer.alloc(header.length + CHUNK);
      drainPipe(target, got);
      assert.ok(got.equals(Buffer.concat([header, s.device.subarray(4 * CHUNK, 5 * CHUNK)])), 'header and range, nothing of the refused ones');
      assert.equal(bytesReadable(target.readFd), 0);
      for (let i = 1; i < s.gate.pins.length; i++) assert.equal(Atomics.load(s.gate.pins, i), 0, 'no pin left behind');
    } finally {
      fs.closeSync(readOnly);
      closePipe(target);
      closePipe(narrow);
      s.done();
    }
  });
  it('an image chunk found whole in the page cache is read without asking again; one found partly cached is asked at each read; a page gone since sends the read to the daemon and the chunk is asked again', async () => {
    const s = setUp();
    /** Drops the device file from the page cache (clean pages: fsync first). */
    const dropAll = (): void => {
      execFileSync('dd', [`if=/proc/${process.pid}/fd/${s.deviceFd}`, 'iflag=nocache', 'count=0', 'status=none']);
      assert.equal(isRangeCached(s.deviceFd, 0, s.device.length), false, 'the file left the page cache');
    };
    const into = Buffer.alloc(8192);
    const readsAt = (offset: number): boolean => readFromCache(s.cached, into, offset) && into.equals(s.device.subarray(offset, offset + into.length));
    try {
      fs.fsyncSync(s.deviceFd);
      dropAll();
      adviseNoReadAhead(s.deviceFd); // what is read comes in alone
      fs.readSync(s.deviceFd, Buffer.alloc(2 * CHUNK), 0, 2 * CHUNK, 2 * CHUNK);
      fs.readSync(s.deviceFd, Buffer.alloc(16384), 0, 16384, 4 * CHUNK);
      assert.equal(readsAt(2 * CHUNK + 4096), true);
      assert.equal(s.gate.cachedChunks[2], CachedChunk.All, 'asked once for the whole chunk');
      assert.equal(readsAt(2 * CHUNK + 40960), true);
      assert.equal(readsAt(3 * CHUNK - 4096), true, 'across two chunks known cached');
      assert.equal(s.gate.cachedChunks[3], CachedChunk.All);
      assert.equal(readsAt(4 * CHUNK), true, 'the cached part of a partly cached chunk');
      assert.equal(s.gate.cachedChunks[4], CachedChunk.Partly);
      // Across a chunk known cached and one partly cached, reaching past the latter's cached part.
      assert.equal(readFromCache(s.cached, Buffer.alloc(24576), 4 * CHUNK - 4096), false);
      assert.equal(readsAt(4 * CHUNK + 32768), false, 'its part not cached goes to the daemon');
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(isRangeCached(s.deviceFd, 4 * CHUNK + 16384, 4096), false, 'asked first: the miss across chunks started no read into the page cache');
      assert.equal(isRangeCached(s.deviceFd, 4 * CHUNK + 32768, 8192), false, 'asked first: the miss started no read into the page cache');
      dropAll();
      assert.equal(readsAt(2 * CHUNK + 4096), false, 'a chunk known whole, now gone: the read goes to the daemon');
      assert.equal(s.gate.cachedChunks[2], CachedChunk.Unknown, 'and the chunk is asked again next time');
    } finally {
      s.done();
    }
  });
});
