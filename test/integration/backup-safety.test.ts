// The backup repository's weak spots, each with the hostile or unlucky input that found it:
// backup_attach against ids that are paths, prunes, repositories that never answer, and the pack
// descriptors it leaves behind.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { BlksnapClient } from '../../src/client/connection.js';
import * as api from '../../src/control/protocol.js';
import { type Created, withDaemon } from '../helpers/backup.js';
import type { TestDaemon } from '../helpers/daemon.js';
import { check, missing } from '../helpers/tools.js';

const MiB = 1024 * 1024;

/** The files under `dir` that the daemon's process holds open. */
function openFilesUnder(daemon: TestDaemon, dir: string): string[] {
  const fdDir = `/proc/${daemon.child.pid}/fd`;
  return fs.readdirSync(fdDir).flatMap((fd) => {
    try {
      const target = fs.readlinkSync(path.join(fdDir, fd));
      return target.startsWith(dir) ? [target] : [];
    } catch {
      return [];
    }
  });
}

/** Settles with the value, or 'pending' when `p` has not settled within `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'pending'> {
  return Promise.race([p, new Promise<'pending'>((r) => setTimeout(() => r('pending'), ms))]);
}

describe('backup_attach', { skip: missing('qemu-io') }, () => {
  it('refuses an id that is a path (../..) and drops no hold file outside the repository', async () => {
    await withDaemon({ 'a.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 2M', daemon.uri('a.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.dir, '--device', 'a.img', '--diff-storage', dir);
      // A backup's files where backups/../../outside points: beside the repository, not in it.
      const outside = path.join(dir, 'outside');
      fs.cpSync(path.join(repo.dir, 'backups', created.id), outside, { recursive: true });
      const client = await BlksnapClient.connect(daemon.controlPath);
      try {
        await assert.rejects(client.call(api.BackupAttach, { repo: repo.dir, id: '../../outside', device: 'a.img' }), { code: 'EINVAL', message: /not a backup id/ });
        await assert.rejects(client.call(api.BackupAttach, { repo: repo.dir, id: created.id, device: '../a.img' }), { code: 'EINVAL', message: /not a device name/ });
      } finally {
        await client.close();
      }
      assert.deepEqual(fs.readdirSync(outside).filter((n) => n.startsWith('.held-by-')), []);
      assert.deepEqual((await daemon.json<{ devices: unknown[] }>('list')).devices.length, 1);
    });
  });

  it('waits for a prune\'s sweep: the repository lock', async () => {
    await withDaemon({ 'b.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x62 0 3M', daemon.uri('b.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.dir, '--device', 'b.img', '--diff-storage', dir);
      const release = await repo.lock(true); // as a prune's sweep holds it
      const attaching = daemon.json<{ name: string; uri: string }>('backup_attach', '--repo', repo.dir, '--id', created.id, '--device', 'b.img');
      assert.equal(await within(attaching, 1500), 'pending', 'attached while a sweep held the lock');
      release();
      const served = await attaching;
      await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(dir, 'b.img'), served.uri]);
    });
  });

  it('closes the packs it read at detach', async () => {
    await withDaemon({ 'b.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x62 0 3M', daemon.uri('b.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.dir, '--device', 'b.img', '--diff-storage', dir);
      const served = await daemon.json<{ name: string; uri: string }>('backup_attach', '--repo', repo.dir, '--id', created.id, '--device', 'b.img');
      await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(dir, 'b.img'), served.uri]);
      const chunks = path.join(repo.dir, 'chunks');
      assert.ok(openFilesUnder(daemon, chunks).length > 0, 'reading opened packs');
      await daemon.json('detach', '--device', served.name);
      assert.deepEqual(openFilesUnder(daemon, chunks), [], 'no pack stays open after detach');
    });
  });

  it('a repository that never answers (a manifest that is a FIFO) holds the attach, never the event loop', async () => {
    await withDaemon({ 'c.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x63 0 1M', daemon.uri('c.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.dir, '--device', 'c.img', '--diff-storage', dir);
      const manifest = path.join(repo.dir, 'backups', created.id, 'manifest.json');
      fs.rmSync(manifest);
      await check('mkfifo', [manifest]);
      const client = await BlksnapClient.connect(daemon.controlPath);
      try {
        const attaching = client.call(api.BackupAttach, { repo: repo.dir, id: created.id, device: 'c.img' });
        attaching.catch(() => undefined);
        await new Promise((r) => setTimeout(r, 300));
        const listed = await within(daemon.json<{ devices: unknown[] }>('list'), 5000);
        assert.notEqual(listed, 'pending', 'the daemon answered while the attach waited for its repository');
        const read = await within(check('qemu-io', ['-f', 'raw', '-c', 'read -P 0x63 0 1M', daemon.uri('c.img')]), 5000);
        assert.notEqual(read, 'pending', 'devices are served meanwhile');
        // A writer comes and goes: the attach reads an empty manifest and fails cleanly.
        fs.closeSync(fs.openSync(manifest, fs.constants.O_WRONLY));
        await assert.rejects(attaching, { code: 'EIO' });
      } finally {
        await client.close();
      }
    });
  });
});
