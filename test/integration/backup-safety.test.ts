// The backup repository's weak spots, each with the hostile or unlucky input that found it:
// backup_attach against ids that are paths, prunes, repositories that never answer, and the pack
// descriptors it leaves behind.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { type PruneResult, pruneRepository } from '../../src/backup/backup-prune.js';
import { restoreBackup } from '../../src/backup/backup-restore.js';
import { verifyRepository } from '../../src/backup/backup-verify.js';
import { PENDING } from '../../src/repository/pending-deletion.js';
import { Repository } from '../../src/repository/repository.js';
import { BlksnapClient } from '../../src/client/connection.js';
import * as api from '../../src/control/protocol.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import { type Created, withDaemon } from '../helpers/backup.js';
import type { TestDaemon } from '../helpers/daemon.js';
import { blksnapCli } from '../helpers/daemon.js';
import { check, missing, run } from '../helpers/tools.js';

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
      const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'a.img', '--diff-storage', dir);
      // A backup's files where backups/../../outside points: beside the repository, not in it.
      const outside = path.join(dir, 'outside');
      fs.cpSync(path.join(repo.location, 'backups', created.id), outside, { recursive: true });
      const client = await BlksnapClient.connect(daemon.controlPath);
      try {
        await assert.rejects(client.call(api.BackupAttach, { repo: repo.location, id: '../../outside', device: 'a.img' }), { code: 'EINVAL', message: /not a backup id/ });
        await assert.rejects(client.call(api.BackupAttach, { repo: repo.location, id: created.id, device: '../a.img' }), { code: 'EINVAL', message: /not a device name/ });
      } finally {
        await client.close();
      }
      assert.deepEqual(fs.readdirSync(outside).filter((n) => n.startsWith('.held-by-')), []);
      assert.deepEqual((await daemon.json<{ devices: unknown[] }>('list')).devices.length, 1);
    });
  });

  it('takes no lock: a prune holding the prune lock holds back neither an attach nor a backup', async () => {
    await withDaemon({ 'b.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x62 0 3M', daemon.uri('b.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'b.img', '--diff-storage', dir);
      const lock = await repo.lock(); // as a prune holds it
      try {
        const served = await daemon.json<{ name: string; uri: string }>('backup_attach', '--repo', repo.location, '--id', created.id, '--device', 'b.img');
        await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(dir, 'b.img'), served.uri]);
        const next = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'b.img', '--diff-storage', dir);
        assert.equal(next.devices[0]?.mode, 'incremental');
      } finally {
        await lock.release();
      }
    });
  });

  it('closes the packs it read at detach', async () => {
    await withDaemon({ 'b.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x62 0 3M', daemon.uri('b.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'b.img', '--diff-storage', dir);
      const served = await daemon.json<{ name: string; uri: string }>('backup_attach', '--repo', repo.location, '--id', created.id, '--device', 'b.img');
      await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(dir, 'b.img'), served.uri]);
      const chunks = path.join(repo.location, 'chunks');
      assert.ok(openFilesUnder(daemon, chunks).length > 0, 'reading opened packs');
      await daemon.json('detach', '--device', served.name);
      assert.deepEqual(openFilesUnder(daemon, chunks), [], 'no pack stays open after detach');
    });
  });

  it('a repository that never answers (a manifest that is a FIFO) holds the attach, never the event loop', async () => {
    await withDaemon({ 'c.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x63 0 1M', daemon.uri('c.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'c.img', '--diff-storage', dir);
      const manifest = path.join(repo.location, 'backups', created.id, 'manifest.json');
      fs.rmSync(manifest);
      await check('mkfifo', [manifest]);
      const client = await BlksnapClient.connect(daemon.controlPath);
      try {
        const attaching = client.call(api.BackupAttach, { repo: repo.location, id: created.id, device: 'c.img' });
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

/** The attached devices' CBT read maps after a take of each (`cbt.switch`): what changed since the last switch. */
async function changedBlocks(daemon: TestDaemon, device: string): Promise<number> {
  const client = await BlksnapClient.connect(daemon.controlPath);
  try {
    const before = await client.call(api.CbtGetInfo, { device });
    const after = await client.call(api.CbtSwitch, { device });
    const map = Buffer.from((await client.call(api.CbtRead, { device, offset: 0, length: after.blockCount })).data, 'base64');
    return map.filter((b) => b > before.changesNumber).length;
  } finally {
    await client.close();
  }
}

describe('backup_restore targets', { skip: missing('qemu-io', 'losetup', 'mkfs.ext4') }, () => {
  it('any other name for an attached store (symlink, hard link, bind mount) is restored through the daemon: CBT sees it, the daemon serves it', async () => {
    await withDaemon({ 's.img': 8 * MiB }, async (daemon, repo, dir) => {
      const store = path.join(dir, 's.img');
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 2M', daemon.uri('s.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 's.img', '--diff-storage', dir);
      const symlink = path.join(dir, 'alias-symlink');
      fs.symlinkSync(store, symlink);
      const hardLink = path.join(dir, 'alias-hardlink');
      fs.linkSync(store, hardLink);
      const bindDir = path.join(dir, 'bind');
      fs.mkdirSync(bindDir);
      await check('mount', ['--bind', dir, bindDir]);
      try {
        for (const alias of [symlink, hardLink, path.join(bindDir, 's.img')]) {
          await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 1M 2M', daemon.uri('s.img')]);
          await changedBlocks(daemon, 's.img'); // the write above, switched out
          const r = await daemon.json<{ mode: string; device?: string; writtenBytes: number }>('backup_restore', '--repo', repo.location, '--id', created.id, '--device', 's.img', '--to', alias);
          assert.ok(r.mode === 'device' || r.mode === 'rollback', `${alias}: mode ${r.mode}`);
          assert.equal(r.device, 's.img');
          assert.ok((await changedBlocks(daemon, 's.img')) > 0, `${alias}: CBT marked the restore's writes`);
          // The daemon serves what was restored: the backup's content.
          await check('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 0 2M', '-c', 'read -P 0 2M 6M', daemon.uri('s.img')]);
          assert.equal(fs.statSync(store).size, 8 * MiB, 'never truncated');
        }
      } finally {
        await check('umount', [bindDir]);
      }
    });
  });

  it('--to: device:NAME is the device, a bare name that only a device has is refused as ambiguous, ./NAME is a new file', async () => {
    await withDaemon({ 'n.img': 4 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 1M', daemon.uri('n.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'n.img', '--diff-storage', dir);
      const elsewhere = path.join(dir, 'elsewhere');
      fs.mkdirSync(elsewhere);
      const restore = (to: string) => run(process.execPath, [blksnapCli, 'backup_restore', '--repo', repo.location, '--id', created.id, '--device', 'n.img', '--to', to, '--json'], { cwd: elsewhere, env: { ...process.env, BLKSNAP_CONTROL: daemon.controlPath } });
      const ambiguous = await restore('n.img');
      assert.equal(ambiguous.code, 22);
      assert.match(ambiguous.stderr, /EINVAL: --to n\.img: write device:n\.img for the attached device, or \.\/n\.img for a new file here/);
      const device = await restore('device:n.img');
      assert.equal(device.code, 0, device.stderr);
      assert.match(JSON.parse(device.stdout).mode, /^(device|rollback)$/);
      const file = await restore('./n.img');
      assert.equal(file.code, 0, file.stderr);
      assert.equal(JSON.parse(file.stdout).mode, 'file');
      await check('cmp', [path.join(elsewhere, 'n.img'), path.join(dir, 'n.img')]);
    });
  });

  it('refuses a mounted block device, a loop device\'s backing file, and (without the daemon) any existing target unless --offline', async () => {
    await withDaemon({ 'm.img': 16 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 0 1M', daemon.uri('m.img')]);
      const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'm.img', '--diff-storage', dir);
      const backing = path.join(dir, 'backing.img');
      fs.writeFileSync(backing, Buffer.alloc(16 * MiB));
      const loop = (await check('losetup', ['-f', '--show', backing])).trim();
      const mnt = path.join(dir, 'mnt');
      fs.mkdirSync(mnt);
      try {
        const asFile = await daemon.cli('backup_restore', '--repo', repo.location, '--id', created.id, '--device', 'm.img', '--to', backing);
        assert.match(asFile.stderr, /EBUSY: --to .*backing\.img is the backing file of \/dev\/loop\d+/);
        await check('mkfs.ext4', ['-q', loop]);
        await check('mount', [loop, mnt]);
        const mounted = await daemon.cli('backup_restore', '--repo', repo.location, '--id', created.id, '--device', 'm.img', '--to', loop);
        assert.match(mounted.stderr, /EBUSY: .*loop\d+ is mounted or held by another process/);
        assert.ok(fs.existsSync(path.join(mnt, 'lost+found')), 'the filesystem is untouched');
      } finally {
        await run('umount', [mnt]);
        await run('losetup', ['-d', loop]);
      }
      // No daemon to ask: an existing file is refused unless --offline; a new file is fine.
      const existing = path.join(dir, 'existing.img');
      fs.writeFileSync(existing, 'keep me');
      const env = { ...process.env, BLKSNAP_CONTROL: path.join(dir, 'no-daemon.sock') };
      const cli = (...args: string[]) => run(process.execPath, [blksnapCli, 'backup_restore', '--repo', repo.location, '--id', created.id, '--device', 'm.img', ...args], { env });
      const refused = await cli('--to', existing);
      assert.match(refused.stderr, /EBUSY: --to .*existing\.img exists, and blksnapd cannot be reached .*--offline/);
      assert.equal(fs.readFileSync(existing, 'utf8'), 'keep me');
      assert.equal((await cli('--to', existing, '--offline')).code, 0);
      assert.equal((await cli('--to', path.join(dir, 'new.img'))).code, 0);
      await check('cmp', [existing, path.join(dir, 'm.img')]);
    });
  });

  it('a restore to a file that fails leaves the old file as it was and nothing full-size beside it', async () => {
    await withDaemon({ 'f.img': 16 * MiB }, async (daemon, repo, dir) => {
      const writer = await NbdClient.connect(daemon.uri('f.img'));
      await writer.write(0, randomBytes(12 * MiB)); // incompressible: the pack holds 12 MiB
      await writer.close();
      const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'f.img', '--diff-storage', dir);
      // One flipped byte in the last record of a pack: that chunk fails its digest mid-restore.
      const chunks = path.join(repo.location, 'chunks');
      const pack = path.join(chunks, fs.readdirSync(chunks).find((n) => n.endsWith('.pack')) as string);
      const fd = fs.openSync(pack, 'r+');
      const size = fs.fstatSync(fd).size;
      const byte = Buffer.alloc(1);
      fs.readSync(fd, byte, 0, 1, size - 100);
      byte[0] = (byte[0] as number) ^ 0xff;
      fs.writeSync(fd, byte, 0, 1, size - 100);
      fs.closeSync(fd);
      const targetDir = path.join(dir, 'restores');
      fs.mkdirSync(targetDir);
      const target = path.join(targetDir, 'old.img');
      fs.writeFileSync(target, 'the old contents\n');
      const r = await daemon.cli('backup_restore', '--repo', repo.location, '--id', created.id, '--device', 'f.img', '--to', target);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /EIO: .*damaged/);
      assert.equal(fs.readFileSync(target, 'utf8'), 'the old contents\n');
      assert.deepEqual(fs.readdirSync(targetDir), ['old.img'], 'nothing left beside it');
    });
  });

  it('a restore in a session: a prune that removes its backup meanwhile only marks the chunks, and the restore is bit-identical; a prune after it deletes them', async () => {
    await withDaemon({ 'p.img': 64 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 0 48M', daemon.uri('p.img')]);
      const copy = path.join(dir, 'p.copy');
      fs.copyFileSync(path.join(dir, 'p.img'), copy);
      const first = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'p.img', '--diff-storage', dir);
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x67 0 48M', daemon.uri('p.img')]);
      await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'p.img', '--diff-storage', dir);
      const target = path.join(dir, 'p.restored');
      // Another reader's session, open across the first prune (as a restore on another host would be).
      const reader = await repo.openSession('restore');
      // The prune comes once the restore is past the manifest and the indexes, reading chunks.
      let pruning: Promise<PruneResult> | null = null;
      const startPrune = (): void => {
        pruning ??= pruneRepository(repo, { keepLast: 1, graceMs: 0 });
      };
      const progress = { start: startPrune, advance() {}, done() {}, note() {} };
      const restored = await restoreBackup(repo, { id: first.id, device: 'p.img', to: target, client: null, daemonError: 'not asked', progress });
      assert.equal(restored.mode, 'file');
      const pruned = await (pruning as unknown as Promise<PruneResult>);
      assert.deepEqual(pruned.removed, [first.id]);
      await check('cmp', [target, copy]);
      assert.equal(pruned.removedChunks, 0, 'nothing deleted while a session that may read it is open');
      assert.ok(pruned.pending.packs > 0, "the first backup's packs are marked");
      assert.equal((await pruneRepository(repo, { keepLast: 1, graceMs: 0 })).removedChunks, 0, 'still nothing while that session lives');
      await reader.close();
      const after = await pruneRepository(repo, { keepLast: 1, graceMs: 0 });
      assert.ok(after.removedChunks > 0, 'the sessions ended: what was marked is deleted');
      assert.deepEqual(after.pending, { packs: 0, pages: 0, bytes: 0, deletableAfter: null });
      assert.equal((await verifyRepository(repo, {})).ok, true);
    });
  });

  it('a backup that commits after a prune read the references and whose session ended before the prune listed sessions loses nothing, with no grace', async () => {
    await withDaemon({ 'q.img': 16 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x71 0 12M', daemon.uri('q.img')]);
      const late = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'q.img', '--diff-storage', dir);
      // The same store, but its listing of backups lacks the late backup until the prune has written
      // its marking: to the prune, that backup committed after it read the references, and its
      // session (long ended) was not there when it listed the sessions.
      const store = repo.backend;
      let markingWritten = false;
      const seenLate = new Proxy(store, {
        get(target, property) {
          if (property === 'listTree') {
            return async (folder: string) => {
              const names = await target.listTree(folder);
              return folder === 'backups/' && !markingWritten ? names.filter((n) => !n.startsWith(`${late.id}/`)) : names;
            };
          }
          if (property === 'write') {
            return async (name: string, data: Uint8Array, options?: { inExistingFolder?: boolean }) => {
              await target.write(name, data, options);
              if (name === PENDING) markingWritten = true;
            };
          }
          const value = Reflect.get(target, property, target) as unknown;
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      const pruned = await pruneRepository(await Repository.open(seenLate), { keepLast: 100, graceMs: 0 });
      assert.equal(pruned.removedChunks, 0, `chunks of a committed backup deleted: ${JSON.stringify(pruned)}`);
      assert.equal(pruned.removedPages, 0, 'index pages of a committed backup deleted');
      const verified = await verifyRepository(repo, {});
      assert.equal(verified.ok, true, verified.problems.join('; '));
    });
  });
});

describe('backup_create --device PATH', { skip: missing('qemu-io') }, () => {
  it('is the attached device: its name in the manifest, the incremental base, the restore by path', async () => {
    await withDaemon({ 'q.img': 8 * MiB }, async (daemon, repo, dir) => {
      const store = path.join(dir, 'q.img');
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 2M', daemon.uri('q.img')]);
      const first = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', store, '--diff-storage', dir);
      assert.equal(first.devices[0]?.name, 'q.img');
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x78 4M 64k', daemon.uri('q.img')]);
      const second = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', store, '--diff-storage', dir);
      assert.equal(second.devices[0]?.mode, 'incremental');
      assert.equal(second.devices[0]?.readBytes, 64 * 1024);
      const restored = path.join(dir, 'q.restored');
      await daemon.json('backup_restore', '--repo', repo.location, '--id', second.id, '--device', store, '--to', restored);
      await check('cmp', [restored, store]);
    });
  });
});

describe('index pages', { skip: missing('qemu-io') }, () => {
  it('a page left empty by a writer that crashed before its syncfs is written again, not reused', async () => {
    await withDaemon({ 'i.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x88 0 3M', daemon.uri('i.img')]);
      const crashed = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'i.img', '--diff-storage', dir);
      // As a crash before the syncfs leaves it: no manifest (the backup never existed), pages renamed in but empty.
      fs.rmSync(path.join(repo.location, 'backups', crashed.id), { recursive: true });
      const pagesDir = path.join(repo.location, 'pages');
      for (const sub of fs.readdirSync(pagesDir)) for (const page of fs.readdirSync(path.join(pagesDir, sub))) fs.truncateSync(path.join(pagesDir, sub, page), 0);
      const again = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'i.img', '--diff-storage', dir);
      const verified = await daemon.json<{ ok: boolean }>('backup_verify', '--repo', repo.location);
      assert.equal(verified.ok, true, 'the new backup is whole');
      const restored = path.join(dir, 'i.restored');
      await daemon.json('backup_restore', '--repo', repo.location, '--id', again.id, '--device', 'i.img', '--to', restored);
      await check('cmp', [restored, path.join(dir, 'i.img')]);
    });
  });
});
