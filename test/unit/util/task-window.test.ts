// The bounded window of tasks the repository's backup and restore loops use: it bounds what is in
// flight, and a task that fails while the producer is not waiting still fails the whole run.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TaskWindow } from '../../../src/util/task-window.js';

const later = (ms: number, fail = false): Promise<void> => new Promise((resolve, reject) => setTimeout(() => (fail ? reject(new Error('EIO: store failed')) : resolve()), ms));

describe('task window', () => {
  it('holds at most its limit in flight', async () => {
    const window = new TaskWindow(3);
    let running = 0;
    let most = 0;
    for (let i = 0; i < 20; i++) {
      running++;
      most = Math.max(most, running);
      await window.add(later(2 + (i % 3)).then(() => void running--));
    }
    await window.drain();
    assert.ok(most <= 3, `${most} in flight`);
  });

  it('a failure while the producer is busy elsewhere is not lost: drain rejects with it', async () => {
    const window = new TaskWindow(8);
    await window.add(later(1, true)); // room left: add returns at once, the task fails afterwards
    await new Promise((r) => setTimeout(r, 20));
    await window.add(later(1));
    await assert.rejects(window.drain(), /EIO: store failed/);
  });
});
