// A repository's config.json: opened as made by backup_init, and refused (naming the field) when its
// zstd level is not one the library takes.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { Repository } from '../../../src/repository/repository.js';
import { tempDir } from '../../helpers/tools.js';

describe('repository config', () => {
  it('opens what backup_init made, with or without compression', async () => {
    for (const zstdLevel of [3, null]) {
      const t = tempDir('blksnap-repo-config-');
      try {
        await Repository.init(path.join(t.dir, 'r'), { zstdLevel });
        assert.equal((await Repository.open(path.join(t.dir, 'r'))).config.zstdLevel, zstdLevel);
      } finally {
        t.remove();
      }
    }
  });

  for (const level of ['fast', 0, 20, 2.5]) {
    it(`refuses a zstd level of ${JSON.stringify(level)}`, async () => {
      const t = tempDir('blksnap-repo-config-');
      try {
        const dir = path.join(t.dir, 'r');
        await Repository.init(dir);
        const file = path.join(dir, 'config.json');
        fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), zstdLevel: level }));
        await assert.rejects(Repository.open(dir), (e: Error & { code?: string }) => e.code === 'EIO' && /config\.json: zstdLevel .* is not a level from 1 to 19 or null/.test(e.message));
      } finally {
        t.remove();
      }
    });
  }
});
