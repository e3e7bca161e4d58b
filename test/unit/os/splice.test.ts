// Pipes for spliced reads: a file's range through a pipe, read back whole; the pool bounds the pipes
// in use and keeps only a few empty ones (each is two descriptors).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { drainPipe, PipePool, spliceFromFile } from '../../../src/os/splice.js';
import { tempDir } from '../../helpers/tools.js';

const pipeDescriptors = (): number => fs.readdirSync('/proc/self/fd').filter((f) => {
  try {
    return fs.readlinkSync(`/proc/self/fd/${f}`).startsWith('pipe:');
  } catch {
    return false;
  }
}).length;

describe('splice pipes', () => {
  it('carry a range of an O_DIRECT file whole, and refuse to read past its end', async () => {
    const t = tempDir('blksnap-splice-');
    const file = path.join(t.dir, 'data');
    const content = randomBytes(4 * 1024 * 1024);
    fs.writeFileSync(file, content);
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
    const pool = new PipePool(1024 * 1024, 1, 4);
    try {
      const pipe = pool.acquire();
      assert.ok(pipe, 'a 1 MiB pipe');
      await spliceFromFile(fd, 1024 * 1024, pipe, 1024 * 1024);
      const out = Buffer.alloc(1024 * 1024);
      drainPipe(pipe, out);
      assert.ok(out.equals(content.subarray(1024 * 1024, 2 * 1024 * 1024)));
      pool.release(pipe);
      const again = pool.acquire();
      assert.equal(again, pipe, 'an empty pipe is used again');
      await assert.rejects(spliceFromFile(fd, 4 * 1024 * 1024 - 4096, again as NonNullable<typeof again>, 8192), /the file ends after 4096 bytes/);
      pool.discard(again as NonNullable<typeof again>);
    } finally {
      fs.closeSync(fd);
      t.remove();
    }
  });

  it('gives no more pipes than allowed in use, and keeps no more empty ones than asked', () => {
    const before = pipeDescriptors();
    const pool = new PipePool(1024 * 1024, 2, 3);
    const taken = [pool.acquire(), pool.acquire(), pool.acquire()];
    assert.ok(taken.every((p) => p !== null));
    assert.equal(pool.acquire(), null, 'a fourth pipe while three are in use');
    assert.equal(pipeDescriptors(), before + 6);
    for (const p of taken) pool.release(p as NonNullable<(typeof taken)[0]>);
    assert.equal(pipeDescriptors(), before + 4, 'two pipes kept, the third closed');
    const p = pool.acquire();
    assert.ok(p);
    pool.discard(p);
    assert.equal(pipeDescriptors(), before + 2);
  });
});
