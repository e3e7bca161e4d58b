// backup_prune counts backups by the time their manifests record, not by id, and names a backup
// dated far in the future (a host with a wrong clock), which would otherwise push the others out.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { pruneRepository } from '../../../src/backup/backup-prune.js';
import { encodeManifest } from '../../../src/repository/manifest.js';
import { Repository } from '../../../src/repository/repository.js';
import { tempDir } from '../../helpers/tools.js';

function addBackup(repo: string, id: string, time: string): void {
  fs.mkdirSync(path.join(repo, 'backups', id), { recursive: true });
  fs.writeFileSync(path.join(repo, 'backups', id, 'manifest.json'), encodeManifest({ version: 1, id, time, devices: [] }));
}

describe('backup_prune order', () => {
  it('--keep-last keeps the newest by recorded time, whatever the ids say; a future date is a warning', async () => {
    const t = tempDir('blksnap-prune-order-');
    try {
      const dir = path.join(t.dir, 'r');
      const repo = await Repository.init(dir);
      // Ids in one order, recorded times in the other (a backup copied from another host keeps its id).
      addBackup(dir, '20260301T000000.000Z-bbbb', '2026-02-01T00:00:00.000Z');
      addBackup(dir, '20260101T000000.000Z-aaaa', '2026-06-01T00:00:00.000Z');
      const dry = await pruneRepository(repo, { keepLast: 1, dryRun: true });
      assert.deepEqual(dry.kept, ['20260101T000000.000Z-aaaa']);
      assert.deepEqual(dry.removed, ['20260301T000000.000Z-bbbb']);
      assert.deepEqual(dry.warnings, []);
      const future = new Date(Date.now() + 30 * 86400_000).toISOString();
      addBackup(dir, '20260102T000000.000Z-cccc', future);
      const flagged = await pruneRepository(repo, { keepLast: 1, dryRun: true });
      assert.deepEqual(flagged.kept, ['20260102T000000.000Z-cccc']);
      assert.equal(flagged.warnings.length, 1);
      assert.match(flagged.warnings[0] as string, /backup 20260102T000000\.000Z-cccc is dated .*in the future/);
    } finally {
      t.remove();
    }
  });
});
