// The library's NBD client against another server (qemu-nbd): structured replies that answer a read
// with data and holes fill every byte of the buffer (it is not zeroed beforehand).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { NbdClient } from '../../src/client/nbd-client.js';
import { missing, tempDir } from '../helpers/tools.js';

const MiB = 1 << 20;

describe('library NBD client', { skip: missing('qemu-nbd') }, () => {
  it('reads data and holes of a sparse file from qemu-nbd byte for byte, on buffers that were not zeroed', async () => {
    const tmp = tempDir();
    const file = path.join(tmp.dir, 'sparse.img');
    const socket = path.join(tmp.dir, 'nbd.sock');
    const data = randomBytes(MiB);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 8 * MiB);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, data, 0, data.length, 3 * MiB); // data at 3 MiB; holes around it
    fs.closeSync(fd);
    const server = spawn('qemu-nbd', ['-f', 'raw', '-k', socket, '-t', file], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 100 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
      const client = await NbdClient.connect(`nbd+unix:///?socket=${socket}`);
      try {
        // Fill the process's free memory with non-zero bytes, so a buffer left unfilled would show.
        for (let i = 0; i < 64; i++) Buffer.allocUnsafeSlow(4 * MiB).fill(0xee);
        for (let round = 0; round < 8; round++) {
          const read = await client.read(2 * MiB, 3 * MiB);
          const expected = Buffer.alloc(3 * MiB);
          data.copy(expected, MiB);
          assert.ok(read.equals(expected), `round ${round}: holes read as zeros and data as written`);
        }
      } finally {
        await client.close();
      }
    } finally {
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
      tmp.remove();
    }
  });
});
