// The chunk index a backup, restore or verify loads: pack indexes read a few at once (in a bucket
// with no cache each is a request of a round trip), yet added in order, so that a chunk two packs
// hold is found in the first of them, whichever read finishes first.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import type { Backend } from '../../../src/repository/backend.js';
import { ChunkIndex, packIds } from '../../../src/repository/chunk-index.js';
import { PLAIN } from '../../../src/repository/cipher.js';
import { LocalBackend } from '../../../src/repository/local-backend.js';
import { PackWriter } from '../../../src/repository/pack.js';
import { tempDir } from '../../helpers/tools.js';

const digestOf = (data: Uint8Array): Buffer => createHash('sha256').update(data).digest();

describe('ChunkIndex.load', () => {
  it('reads pack indexes a few at once, and a chunk in two packs is located in the first', async () => {
    const { dir, remove } = tempDir('blksnap-chunk-index-');
    try {
      const local = new LocalBackend(dir);
      const shared = randomBytes(4096);
      // Six packs, each with a chunk of its own and the shared one.
      for (let p = 0; p < 6; p++) {
        const writer = new PackWriter(local, PLAIN, null);
        writer.append(digestOf(shared), shared);
        const own = randomBytes(4096);
        writer.append(digestOf(own), own);
        await writer.close();
      }
      const ids = await packIds(local);
      assert.equal(ids.length, 6);
      // The store answers index reads in reverse order of asking: the first pack's index comes last.
      let running = 0;
      let most = 0;
      let asked = 0;
      const slow = new Proxy(local, {
        get(target, key) {
          // The backend's own methods on itself (its fields are private).
          const own = Reflect.get(target, key, target) as unknown;
          if (key !== 'read') return typeof own === 'function' ? own.bind(target) : own;
          return async (name: string): Promise<Buffer> => {
            if (!name.endsWith('.idx')) return target.read(name);
            running++;
            most = Math.max(most, running);
            const delay = 60 - 10 * asked++;
            await new Promise((r) => setTimeout(r, Math.max(0, delay)));
            try {
              return await target.read(name);
            } finally {
              running--;
            }
          };
        },
      }) as Backend;
      const index = await ChunkIndex.load(slow, PLAIN);
      assert.equal(index.count, 7, 'the shared chunk once, and six of their own');
      assert.ok(most > 1, `index reads overlapped (${most} at most at once)`);
      assert.ok(most <= local.requestsAtOnce, `at most ${local.requestsAtOnce} at once (${most})`);
      const at = index.find(digestOf(shared));
      assert.ok(at >= 0);
      assert.equal(index.location(at).pack, ids[0], 'the shared chunk is located in the first pack');
    } finally {
      remove();
    }
  });
});
