// CBT as NBD block status: names offered and matched, extents on tracking-block edges, never clean when unsure.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { Device } from '../../../src/core/device.js';
import { changeExtents, matchContexts } from '../../../src/frontends/nbd/meta-context.js';

const BLOCK = 65536;

describe('CBT meta contexts', () => {
  const device = new Device('d', new MemoryStorage(16 * BLOCK + 100));
  device.tracker.cbt.mark(3 * BLOCK + 5, 10); // block 3: byte 1
  device.tracker.switchCbt(); // changes number 1
  device.tracker.cbt.mark(5 * BLOCK, 2 * BLOCK); // blocks 5, 6: byte 2

  it('LIST offers namespaces and all bitmaps; SET takes exact names only', () => {
    assert.deepEqual(matchContexts(device, [], true).map((c) => c.name), ['base:allocation', 'x-blksnap:cbt', 'qemu:dirty-bitmap:cbt-0', 'qemu:dirty-bitmap:cbt-1']);
    assert.deepEqual(matchContexts(device, ['qemu:'], true).map((c) => c.name), ['qemu:dirty-bitmap:cbt-0', 'qemu:dirty-bitmap:cbt-1']);
    assert.deepEqual(matchContexts(device, ['qemu:dirty-bitmap:'], false), [], 'a namespace selects nothing in SET');
    assert.deepEqual(matchContexts(device, ['qemu:dirty-bitmap:cbt-2', 'qemu:dirty-bitmap:cbt-01x', 'x-blksnap:cbt'], false).map((c) => [c.id, c.name]), [[2, 'x-blksnap:cbt']]);
    const untracked = new Device('u', new MemoryStorage(BLOCK), { tracking: false });
    assert.deepEqual(matchContexts(untracked, [], true).map((c) => c.name), ['base:allocation']);
  });

  it('extents follow block edges, are clipped to the request, and REQ_ONE gives one', () => {
    const [cbt0] = matchContexts(device, ['qemu:dirty-bitmap:cbt-0'], false);
    assert.ok(cbt0);
    assert.deepEqual(changeExtents(cbt0, device.changes(), 0, 16 * BLOCK + 100, 100), [
      { length: 3 * BLOCK, flags: 0 }, { length: BLOCK, flags: 1 }, { length: BLOCK, flags: 0 }, { length: 2 * BLOCK, flags: 1 }, { length: 9 * BLOCK + 100, flags: 0 },
    ]);
    assert.deepEqual(changeExtents(cbt0, device.changes(), 3 * BLOCK + 7, 3 * BLOCK, 1), [{ length: BLOCK - 7, flags: 1 }]);
    const [bytes] = matchContexts(device, ['x-blksnap:cbt'], false);
    assert.ok(bytes);
    assert.deepEqual(changeExtents(bytes, device.changes(), 3 * BLOCK, 4 * BLOCK, 100), [{ length: BLOCK, flags: 1 }, { length: BLOCK, flags: 0 }, { length: 2 * BLOCK, flags: 2 }]);
  });

  it('a new generation since the context was chosen: all dirty, never a wrong clean', () => {
    const [cbt1] = matchContexts(device, ['qemu:dirty-bitmap:cbt-1'], false);
    assert.ok(cbt1);
    const changes = device.changes();
    assert.ok(changes);
    assert.deepEqual(changeExtents(cbt1, { ...changes, generationId: 'another' }, 0, 4 * BLOCK, 100), [{ length: 4 * BLOCK, flags: 1 }]);
  });
});
