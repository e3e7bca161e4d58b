// backup_copy between two local repositories that name chunks alike (both plain): the first copy
// moves every chunk, the next only those the target lacks; copies restore bit-identical and verify;
// a copy is the target's incremental base for the same host and device; a damaged record in the
// source stops the copy, naming the chunk, with nothing committed in the target. Copies into and
// between buckets, under other keys, are in s3-repository.test.ts.
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { copyBackups } from '../../src/backup/backup-copy.js';
import { verifyRepository } from '../../src/backup/backup-verify.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import { ChunkIndex } from '../../src/repository/chunk-index.js';
import { readIndex } from '../../src/repository/digest-index.js';
import { names } from '../../src/repository/layout.js';
import { RECORD_HEADER } from '../../src/repository/pack.js';
import { Repository } from '../../src/repository/repository.js';
import { type Created, withDaemon, writeRandomBlocks } from '../helpers/backup.js';
import { check, missing } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;

describe('backup_copy', { skip: missing('nbdcopy', 'cmp') }, () => {
  it('moves only what the target lacks; copies restore bit-identical, are the next backup\'s base there, and a damaged source record commits nothing', async () => {
    await withDaemon({ 'k.img': 16 * MiB }, async (daemon, source, dir) => {
      const target = await Repository.init(path.join(dir, 'second-site'), { key: null });
      // The source is plain too (withDaemon's default): the two name chunks alike.
      const nbd = await NbdClient.connect(daemon.uri('k.img'));
      const copies: Array<{ id: string; file: string }> = [];
      const backup = async (): Promise<void> => {
        const made = await daemon.json<Created>('backup_create', '--repo', source.location, '--device', 'k.img');
        const file = path.join(dir, `copy-${copies.length}`);
        await check('nbdcopy', [daemon.uri('k.img'), file]);
        copies.push({ id: made.id, file });
      };
      try {
        for (let at = 0; at < 8 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        await nbd.flush();
        await backup();
        const first = await copyBackups(source, target, {});
        assert.equal(first.copied[0]?.copiedChunks, (8 * MiB) / BLOCK);
        const touched = await writeRandomBlocks(nbd, 5, 16 * MiB, BLOCK);
        await nbd.flush();
        await backup();
        const second = await copyBackups(source, target, {});
        assert.deepEqual(second.present, [copies[0]?.id]);
        assert.equal(second.copied[0]?.copiedChunks, touched.size, 'only the blocks written since');
        for (const c of copies) {
          const to = path.join(dir, `restored-${c.id}`);
          await daemon.json('backup_restore', '--repo', target.location, '--id', c.id, '--device', 'k.img', '--to', to);
          await check('cmp', [to, c.file]);
        }
        assert.equal((await verifyRepository(target, {})).ok, true);
        // A backup made straight into the second site builds on the copy.
        const direct = await daemon.json<Created>('backup_create', '--repo', target.location, '--device', 'k.img');
        assert.equal(direct.devices[0]?.mode, 'incremental');

        await writeRandomBlocks(nbd, 3, 16 * MiB, BLOCK);
        await nbd.flush();
        await backup();
        // Bend a record of a chunk only the newest backup has: the copy stops on it, naming it.
        const last = copies.at(-1) as { id: string };
        const chunks = await ChunkIndex.load(source.backend, source.cipher);
        const known = await ChunkIndex.load(target.backend, target.cipher);
        const digests = (await readIndex(source.backend, names.indexRoot(last.id, 'k.img.index'), source.cipher)).digests;
        let bent = '';
        for (let at = 0; at < digests.length && bent === ''; at += 32) {
          if (digests.subarray(at, at + 32).every((b) => b === 0) || known.has(digests, at)) continue;
          const where = chunks.require(digests, at);
          const file = path.join(source.location, names.pack(where.pack));
          const fd = fs.openSync(file, 'r+');
          const byte = Buffer.alloc(1);
          fs.readSync(fd, byte, 0, 1, where.offset + RECORD_HEADER + 10);
          byte[0] = (byte[0] as number) ^ 0x40;
          fs.writeSync(fd, byte, 0, 1, where.offset + RECORD_HEADER + 10);
          fs.closeSync(fd);
          bent = digests.toString('hex', at, at + 32);
        }
        assert.notEqual(bent, '', 'a chunk new in the last backup');
        await assert.rejects(copyBackups(source, target, { latest: true }), (e: Error & { code?: string }) => e.code === 'EIO' && e.message.includes(`chunk ${bent}`));
        assert.ok(!(await target.backupIds()).includes(last.id), 'nothing committed');
        assert.equal((await verifyRepository(target, {})).ok, true, 'the target is whole');
      } finally {
        await nbd.close();
      }
    });
  });
});
