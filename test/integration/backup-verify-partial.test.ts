// backup_verify in part: --metadata reads no pack yet finds a chunk whose pack is gone; slices K/N
// read each pack exactly once over N runs, and a damaged chunk is found by the one slice holding its
// pack; --max-duration stops starting pack reads and says how many it read; a backup's index pages
// are read a few at once, and a missing one is still named.
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { verifyRepository } from '../../src/backup/backup-verify.js';
import { Repository } from '../../src/repository/repository.js';
import { readIndexRoot } from '../../src/repository/digest-index.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import { packIds } from '../../src/repository/chunk-index.js';
import { indexFileOf, names } from '../../src/repository/layout.js';
import { entriesOf, RECORD_HEADER, readPackIndex } from '../../src/repository/pack.js';
import { type Created, withDaemon, writeRandomBlocks } from '../helpers/backup.js';
import { missing } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;

describe('backup_verify in part', { skip: missing('qemu-io') }, () => {
  it('--metadata, --read-data-subset K/N and --max-duration', async () => {
    await withDaemon({ 'p.img': 16 * MiB }, async (daemon, repo, dir) => {
      const nbd = await NbdClient.connect(daemon.uri('p.img'));
      try {
        for (let at = 0; at < 8 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        await nbd.flush();
        await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'p.img', '--diff-storage', dir);
        for (let round = 0; round < 5; round++) {
          await writeRandomBlocks(nbd, 24, 16 * MiB, BLOCK);
          await nbd.flush();
          await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'p.img', '--diff-storage', dir);
        }
      } finally {
        await nbd.close();
      }
      const packs = await packIds(repo.backend);
      assert.ok(packs.length >= 6, `${packs.length} packs`);

      const meta = await verifyRepository(repo, { metadataOnly: true });
      assert.deepEqual([meta.ok, meta.packsChecked, meta.packsTotal], [true, 0, packs.length]);

      // A flipped byte in the first record of one pack: found by exactly one slice of three.
      const bent = packs[Math.floor(packs.length / 2)] as string;
      const first = entriesOf(await readPackIndex(repo.backend, bent, repo.cipher)).sort((a, b) => a.offset - b.offset)[0];
      assert.ok(first);
      const file = path.join(repo.location, names.pack(bent));
      const bytes = fs.readFileSync(file);
      const at = first.offset + RECORD_HEADER + 5;
      bytes[at] = (bytes[at] as number) ^ 0x10;
      fs.writeFileSync(file, bytes);
      const slices = [];
      for (let k = 1; k <= 3; k++) slices.push(await verifyRepository(repo, { subset: { slice: k, of: 3 } }));
      assert.equal(slices.reduce((a, r) => a + r.packsChecked, 0), packs.length, 'the three slices read every pack once');
      assert.deepEqual(slices.map((r) => r.ok).filter((ok) => !ok).length, 1, 'one slice holds the damaged pack');
      assert.equal((await verifyRepository(repo, { metadataOnly: true })).ok, true, 'metadata alone cannot see a damaged chunk');

      const quick = await verifyRepository(repo, { maxDurationMs: 0 });
      assert.ok(quick.packsChecked < quick.packsTotal, `--max-duration 0 read ${quick.packsChecked} of ${quick.packsTotal}`);

      // A pack gone: metadata alone finds the chunks it held missing.
      fs.rmSync(path.join(repo.location, names.packIndex(bent)));
      fs.rmSync(file);
      const gone = await verifyRepository(repo, { metadataOnly: true });
      assert.equal(gone.ok, false);
      assert.match(gone.problems.join('\n'), /chunk [0-9a-f]{64} is missing/);
      const cli = await daemon.cli('backup_verify', '--repo', repo.location, '--metadata');
      assert.equal(cli.code, 1);
      assert.match(cli.stdout, /DAMAGED: .*\(0 of \d+ packs read\)/);
    });
  });
  it("reads a backup's index pages a few at once (in a bucket each is a round trip), and still finds one missing", async () => {
    // 256 MiB of 64 KiB chunks: an index of 8 pages, some data in each.
    await withDaemon({ 'i.img': 256 * MiB }, async (daemon, repo, dir) => {
      const nbd = await NbdClient.connect(daemon.uri('i.img'));
      try {
        for (let at = 0; at < 256 * MiB; at += 32 * MiB) await nbd.write(at, randomFillSync(Buffer.alloc(BLOCK)));
        await nbd.flush();
      } finally {
        await nbd.close();
      }
      const made = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'i.img', '--diff-storage', dir);
      let running = 0;
      let most = 0;
      const slowPages = new Proxy(repo.backend, {
        get(target, property) {
          if (property === 'read') {
            return async (name: string) => {
              if (!name.startsWith('pages/')) return target.read(name);
              running++;
              most = Math.max(most, running);
              try {
                await new Promise((r) => setTimeout(r, 20));
                return await target.read(name);
              } finally {
                running--;
              }
            };
          }
          const value = Reflect.get(target, property, target) as unknown;
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      const slowRepo = await Repository.open(slowPages);
      const meta = await verifyRepository(slowRepo, { metadataOnly: true });
      assert.equal(meta.ok, true, meta.problems.join('; '));
      assert.ok(most > 1, `index pages read one at a time (${most} at most at once)`);
      assert.ok(most <= repo.backend.requestsAtOnce, `${most} page reads at once`);
      // A page gone is still named, in the order of the index.
      const root = await readIndexRoot(repo.backend, names.indexRoot(made.id, indexFileOf('i.img')), repo.cipher);
      const gone = root.pages[3] as string;
      fs.rmSync(path.join(repo.location, names.page(gone)));
      const damaged = await verifyRepository(slowRepo, { metadataOnly: true });
      assert.equal(damaged.ok, false);
      assert.ok(damaged.problems.some((p) => p.includes(`index page ${gone}`) && p.includes('missing')), damaged.problems.join('; '));
    });
  });
});
