// Discarding what a backup has read: a trim of a snapshot image (qemu-io's discard, a real client)
// gives the kept originals' space back and spares future copies of the chunks it covers, which then
// read as zeros; backup_create --discard-after-read under a steady writer stores exactly the image
// as it was at the take.
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createBackup } from '../../src/backup/backup-create.js';
import { restoreBackup } from '../../src/backup/backup-restore.js';
import { BlksnapClient } from '../../src/client/connection.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import type * as api from '../../src/control/protocol.js';
import { withDaemon } from '../helpers/backup.js';
import { check, missing } from '../helpers/tools.js';

const MiB = 1024 * 1024;

describe('discard after read', { skip: missing('qemu-io', 'nbdcopy', 'cmp') }, () => {
  it('a trimmed image chunk gives its space back, is never copied again, and reads zeros', async () => {
    await withDaemon({ 'v.img': 8 * MiB }, async (daemon, _repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 8M', daemon.uri('v.img')]);
      const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'v.img', '--file', dir, '--limit', '64M');
      await daemon.json('snapshot_take', '--id', id);
      const info = async (): Promise<{ usedBytes: number; peakBytes: number }> => {
        const d = (await daemon.json<api.SnapshotInfo>('snapshot_info', '--device', 'v.img')).diffStorage;
        return { usedBytes: d?.usedBytes ?? -1, peakBytes: d?.peakBytes ?? -1 };
      };
      const image = (await daemon.json<api.SnapshotInfo>('snapshot_info', '--device', 'v.img')).image?.uri as string;
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 0 2M', daemon.uri('v.img')]);
      assert.equal((await info()).usedBytes, 2 * MiB, 'the first 2 MiB kept');
      // The backup has read the first 4 MiB: it lets them go.
      await check('qemu-io', ['-f', 'raw', '-c', 'discard 0 4M', image]);
      assert.deepEqual(await info(), { usedBytes: 0, peakBytes: 2 * MiB }, 'kept space given back');
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 4M', daemon.uri('v.img')]);
      assert.equal((await info()).usedBytes, 0, 'discarded chunks are never copied again');
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 6M 1M', daemon.uri('v.img')]);
      assert.equal((await info()).usedBytes, MiB, 'a chunk not discarded is kept as before, in a slot given back');
      assert.equal((await info()).peakBytes, 2 * MiB, 'in a slot given back: the peak does not grow');
      assert.match(await check('qemu-io', ['-f', 'raw', '-c', 'read -P 0 0 4M', image]), /read 4194304\/4194304/);
      assert.match(await check('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 4M 4M', image]), /read 4194304\/4194304/, 'the rest of the image as at the take');
      await daemon.json('snapshot_destroy', '--id', id);
    });
  });

  it('backup_create --discard-after-read under a steady writer stores the image as it was at the take', async () => {
    await withDaemon({ 'w.img': 32 * MiB }, async (daemon, repo, dir) => {
      const nbd = await NbdClient.connect(daemon.uri('w.img'));
      for (let at = 0; at < 32 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
      let writing = true;
      const writer = (async () => {
        while (writing) await nbd.write(Math.floor(Math.random() * 512) * 65536, randomFillSync(Buffer.alloc(65536)));
      })();
      const atTake = path.join(dir, 'at-take.img');
      const client = await BlksnapClient.connect(daemon.controlPath);
      try {
        const made = await createBackup(repo, client, {
          devices: ['w.img'],
          diffStorage: dir,
          readFronts: 1,
          discardAfterRead: true,
          afterTake: async ([image]) => {
            await check('nbdcopy', [image?.uri as string, atTake]);
          },
        });
        writing = false;
        await writer;
        const restored = path.join(dir, 'restored.img');
        await restoreBackup(repo, { id: made.id, device: 'w.img', to: restored, client: null, daemonError: 'not asked' });
        await check('cmp', [restored, atTake]);
      } finally {
        writing = false;
        await writer;
        await nbd.close();
        await client.close();
      }
    });
  });
});
