// The writeback watch allows synchronous writes only far below the kernel's throttling point and not
// right after a slow one.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { WritebackWatch } from '../../../src/os/writeback.js';

const vmstat = (dirty: number, writeback: number) =>
  `nr_free_pages 100\nnr_dirty ${dirty}\nnr_writeback ${writeback}\nnr_dirty_threshold 1000\nnr_dirty_background_threshold 500\n`;

describe('writeback watch', () => {
  it('allows synchronous writes while dirty + writeback pages stay under half the freerun ceiling', () => {
    let text = vmstat(100, 50);
    const watch = new WritebackWatch(() => text);
    try {
      assert.equal(watch.allowsSyncWrite, true, '150 pages < 375');
      text = vmstat(300, 100);
      const fresh = new WritebackWatch(() => text);
      assert.equal(fresh.allowsSyncWrite, false, '400 pages >= 375 (ceiling (1000 + 500) / 2 = 750)');
      fresh.stop();
    } finally {
      watch.stop();
    }
  });

  it('an unreadable /proc/vmstat never allows blocking the event loop', () => {
    const watch = new WritebackWatch(() => {
      throw new Error('EACCES');
    });
    assert.equal(watch.allowsSyncWrite, false);
    watch.stop();
  });

  it('a slow synchronous write sends writes to the thread pool for a while', () => {
    const watch = new WritebackWatch(() => vmstat(0, 0));
    try {
      watch.noteSyncWrite(2);
      assert.equal(watch.allowsSyncWrite, true);
      watch.noteSyncWrite(50);
      assert.equal(watch.allowsSyncWrite, false);
    } finally {
      watch.stop();
    }
  });
});
