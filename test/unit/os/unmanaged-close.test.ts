// Descriptors made through the FFI (an io_uring, a splice pipe) close without Node's warning in a
// worker thread, where the FUSE ring and reader threads run: fs.closeSync there warned "File
// descriptor N closed but not opened in unmanaged mode" on every ring a test closed.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { tempDir } from '../../helpers/tools.js';

const ioUring = new URL('../../../src/os/io-uring.js', import.meta.url).href;
const splice = new URL('../../../src/os/splice.js', import.meta.url).href;

describe('descriptors made through the FFI', () => {
  it('close in a worker thread with no warning, and are gone after', async () => {
    const body = `
      import { parentPort } from 'node:worker_threads';
      import * as fs from 'node:fs';
      const { IoUring, ioUringIsUsable } = await import(${JSON.stringify(ioUring)});
      const { openPipe, closePipe } = await import(${JSON.stringify(splice)});
      const warnings = [];
      process.on('warning', (w) => warnings.push(w.message));
      const fds = [];
      if (ioUringIsUsable()) {
        const ring = new IoUring(2);
        fds.push(ring.fd);
        ring.close();
      }
      const pipe = openPipe(65536);
      if (pipe && pipe !== 'too small') {
        fds.push(pipe.readFd, pipe.writeFd);
        closePipe(pipe);
      }
      await new Promise((r) => setTimeout(r, 50));
      const open = fds.filter((fd) => { try { fs.fstatSync(fd); return true; } catch { return false; } });
      parentPort.postMessage({ warnings, closed: fds.length, open });
    `;
    const t = tempDir('blksnap-unmanaged-close-');
    let result: { warnings: string[]; closed: number; open: number[] };
    try {
      const file = path.join(t.dir, 'worker.mjs');
      fs.writeFileSync(file, body);
      const worker = new Worker(file);
      result = await new Promise((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      await worker.terminate();
    } finally {
      t.remove();
    }
    assert.ok(result.closed >= 2, 'a pipe at least was made and closed');
    assert.deepEqual(result.warnings, []);
    assert.deepEqual(result.open, [], 'every descriptor is closed');
  });
});
