// The byte-rate limit of --limit-upload/--limit-download: transfers from two threads sharing one
// limit take together the time the rate gives them (not less), and no limit costs no wait.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { newRateLimit, paced } from '../../../src/util/rate-limit.js';

const moduleUrl = new URL('../../../src/util/rate-limit.js', import.meta.url).href;

describe('rate limit', () => {
  it('holds two threads together to the rate: 2 MiB at 4 MiB/s takes half a second', async () => {
    const limit = newRateLimit(4 * 2 ** 20);
    const started = performance.now();
    // The other thread sends 1 MiB in 16 pieces through the same shared state.
    const worker = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       import(workerData.url).then(async ({ paced }) => {
         for (let i = 0; i < 16; i++) await paced(workerData.limit, 65536);
         parentPort.postMessage('done');
       });`,
      { eval: true, workerData: { url: moduleUrl, limit } },
    );
    const other = new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    for (let i = 0; i < 16; i++) await paced(limit, 65536);
    await other;
    await worker.terminate();
    const seconds = (performance.now() - started) / 1000;
    // The first piece goes at once: 2 MiB less one piece is the time owed.
    assert.ok(seconds >= (2 * 2 ** 20 - 65536) / (4 * 2 ** 20) - 0.02, `${seconds.toFixed(3)} s`);
  });

  it('without a limit nothing waits', async () => {
    const started = performance.now();
    for (let i = 0; i < 1000; i++) await paced(null, 2 ** 30);
    assert.ok(performance.now() - started < 500);
  });
});
