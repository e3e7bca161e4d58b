// The tests' temporary directories: a test process killed before its clean-up leaves its directories
// behind, and a later one removes them, but never one of a running process or one with a mount inside.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { removeOrphanedTempDirs, run, tempDir } from '../../helpers/tools.js';

describe('test helpers: temporary directories', () => {
  it('removes the directories of a process that is gone, and only those', async () => {
    const parent = tempDir('blksnap-orphans-');
    try {
      // A pid that no longer runs: a child that has exited.
      const gone = spawnSync('true').pid as number;
      const orphan = path.join(parent.dir, `blksnap-test-pid${gone}-AbC123`);
      const mine = path.join(parent.dir, `blksnap-test-pid${process.pid}-XyZ789`);
      const other = path.join(parent.dir, 'someone-elses');
      const mounted = path.join(parent.dir, `blksnapd-pid${gone}-Mnt456`);
      for (const d of [orphan, mine, other, mounted]) fs.mkdirSync(path.join(d, 'inner'), { recursive: true });
      fs.writeFileSync(path.join(orphan, 'inner', 'data'), 'left by a killed test');
      assert.equal((await run('mount', ['-t', 'tmpfs', 'none', path.join(mounted, 'inner')])).code, 0);
      try {
        assert.deepEqual(removeOrphanedTempDirs(parent.dir), [orphan]);
        assert.ok(!fs.existsSync(orphan));
        for (const d of [mine, other, mounted]) assert.ok(fs.existsSync(d), d);
      } finally {
        await run('umount', [path.join(mounted, 'inner')]);
      }
      assert.deepEqual(removeOrphanedTempDirs(parent.dir), [mounted]);
    } finally {
      parent.remove();
    }
  });

  it('names each directory after the process that made it', () => {
    const t = tempDir('blksnap-named-');
    try {
      assert.match(path.basename(t.dir), new RegExp(`^blksnap-named-pid${process.pid}-[A-Za-z0-9]{6}$`));
    } finally {
      t.remove();
    }
  });
});
