// The bounded window of tasks the repository's backup and restore loops use: it bounds what is in
// flight, and a task that fails while the producer is not waiting still fails the whole run.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TaskWindow } from '../../../src/util/task-window.js';

const later = (ms: number, fail = false): Promise<void> => new Promise((resolve, reject) => setTimeout(() => (fail ? reject(new Error('EIO: store failed')) : resolve()), ms));

describe('task window', () => {
  it('after a failure, settle waits for the tasks still running (a restore closes its target only then)', async () => {
    const window = new TaskWindow(4);
    let started = 0;
    let finished = 0;
    const slow = (ms: number): Promise<void> => {
      started++;
      return later(ms).then(() => void finished++);
    };
    await window.add(slow(40));
    await window.add(slow(60));
    await window.add(later(5, true));
    await assert.rejects(async () => {
      for (let i = 0; i < 10; i++) await window.add(slow(50));
    }, /EIO/);
    assert.ok(finished < started, 'some tasks still run when the producer hears of the failure');
    await window.settle();
    assert.equal(finished, started, 'every task had finished when settle resolved');
    await assert.rejects(window.drain(), /EIO/);
  });

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

  it('many producers taking work from one queue (a backup\'s read lanes): every one finishes, drain waits for the last task', async () => {
    const window = new TaskWindow(4);
    const total = 800;
    let next = 0;
    let done = 0;
    const lane = async (): Promise<void> => {
      while (next < total) {
        const i = next++;
        await window.add(later(i % 3).then(() => void done++));
      }
    };
    let timer: NodeJS.Timeout | undefined;
    const stuck = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`lanes still waiting after 10 s; ${done} of ${total} done`)), 10_000)));
    try {
      await Promise.race([Promise.all(Array.from({ length: 32 }, lane)).then(() => window.drain()), stuck]);
    } finally {
      clearTimeout(timer);
    }
    assert.equal(done, total, 'drain resolved before every task was done');
  });

  it('a failure reaches every producer waiting for room', async () => {
    const window = new TaskWindow(2);
    await window.add(later(5, true));
    await window.add(later(50));
    const waiting = [window.add(later(1)), window.add(later(1))];
    for (const w of waiting) await assert.rejects(w, /EIO: store failed/);
    await assert.rejects(window.drain(), /EIO: store failed/);
  });

  it('a failure while the producer is busy elsewhere is not lost: drain rejects with it', async () => {
    const window = new TaskWindow(8);
    await window.add(later(1, true)); // room left: add returns at once, the task fails afterwards
    await new Promise((r) => setTimeout(r, 20));
    await window.add(later(1));
    await assert.rejects(window.drain(), /EIO: store failed/);
  });
});
