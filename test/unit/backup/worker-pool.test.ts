// The backup worker pool's life cycle: the process may end, or the pool close, at any moment after
// the pool is made, also while its workers still load the FFI.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WorkerPool } from '../../../src/backup/workers/worker-pool.js';
import { tempDir } from '../../helpers/tools.js';

const poolModule = new URL('../../../src/backup/workers/worker-pool.js', import.meta.url).href;

// Preloaded into every thread of the child: a worker's first require of koffi goes on defining
// functions for 400 ms, as its own modules do for a few milliseconds when they load. That turns a
// narrow window (where ending the process aborted it inside koffi) into one a test hits each time.
const SLOW_FFI_LOAD = `
const Module = require('node:module');
const { isMainThread } = require('node:worker_threads');
const load = Module._load;
let isSlowed = false;
Module._load = function (request, ...rest) {
  const loaded = load.call(this, request, ...rest);
  if (request === 'koffi' && !isMainThread && !isSlowed) {
    isSlowed = true;
    const libc = loaded.load('libc.so.6');
    const start = Date.now();
    while (Date.now() - start < 400) libc.func('int getpid()');
  }
  return loaded;
};
`;

describe('backup worker pool', () => {
  let dir: ReturnType<typeof tempDir>;
  before(() => {
    dir = tempDir('blksnap-test-pool-');
    fs.writeFileSync(path.join(dir.dir, 'slow-ffi-load.cjs'), SLOW_FFI_LOAD);
  });
  after(() => dir.remove());

  /** Runs `body` (a module using `pool`, a fresh pool of two) in a child whose workers load slowly. */
  function runChild(body: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const file = path.join(dir.dir, `child-${Math.random().toString(36).slice(2)}.mjs`);
    fs.writeFileSync(file, `import { WorkerPool } from ${JSON.stringify(poolModule)};\nconst pool = new WorkerPool('create', 2);\n${body}\n`);
    return new Promise((resolve) => {
      const child = spawn(process.execPath, ['--require', path.join(dir.dir, 'slow-ffi-load.cjs'), file], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  it('a process that ends on its own while its workers still load the FFI exits cleanly', async () => {
    const run = await runChild('setTimeout(() => {}, 100);');
    assert.doesNotMatch(run.stderr, /FATAL/);
    assert.equal(run.code, 0);
  });

  it('close() while the workers still load the FFI waits for them, then ends them', async () => {
    const run = await runChild("setTimeout(() => pool.close().then(() => console.log('closed')), 100);");
    assert.doesNotMatch(run.stderr, /FATAL/);
    assert.equal(run.code, 0);
    assert.equal(run.stdout.trim(), 'closed');
  });

  it('a pool closed at once still works when made again', async () => {
    await new WorkerPool('create', 2).close();
    const pool = new WorkerPool('create', 1);
    const result = await pool.run({ kind: 'hash', id: 0, data: new Uint8Array(4096), lengths: [4096] });
    assert.equal(result.digests.length, 32);
    await pool.close();
  });
});
