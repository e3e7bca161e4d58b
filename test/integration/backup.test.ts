// The backup repository end to end against a real daemon: full and incremental backups of two
// devices under a writer, restored bit-identical to the images at their takes; new generations;
// damage found by verify and refused by restore; kill -9 of backup_create; prune during a backup;
// rollback onto an attached device; a backup served again as a device (NBD and a mounted /dev/loopN),
// around a damaged chunk too.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomFillSync, randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createBackup } from '../../src/backup/backup-create.js';
import { pruneRepository } from '../../src/backup/backup-prune.js';
import { restoreBackup } from '../../src/backup/backup-restore.js';
import { verifyRepository } from '../../src/backup/backup-verify.js';
import { ChunkIndex } from '../../src/repository/chunk-index.js';
import { RECORD_HEADER } from '../../src/repository/pack.js';
import { BlksnapClient } from '../../src/client/connection.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import * as api from '../../src/control/protocol.js';
import { blksnapCli, type TestDaemon } from '../helpers/daemon.js';
import { type Created, withDaemon } from '../helpers/backup.js';
import { Mounts, mkfs } from '../helpers/mounts.js';
import { check, missing, run, sparseFile, tempDir } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;


/** Writes random 4-128 KiB pieces at random places of each device until stopped. */
function writer(daemon: TestDaemon, devices: string[]): { stop: () => Promise<number> } {
  let isStopped = false;
  let writes = 0;
  const loops = devices.map(async (name) => {
    const client = await NbdClient.connect(daemon.uri(name));
    try {
      while (!isStopped) {
        const length = (1 + randomInt(32)) * 4096;
        // Now and then the very end, which need not be page-aligned.
        const offset = randomInt(8) === 0 ? client.size - length : randomInt(Math.floor((client.size - length) / 4096)) * 4096;
        await client.write(offset, randomFillSync(Buffer.alloc(length)));
        writes++;
      }
    } finally {
      await client.close();
    }
  });
  return {
    stop: async () => {
      isStopped = true;
      await Promise.all(loops);
      return writes;
    },
  };
}

async function control(daemon: TestDaemon): Promise<BlksnapClient> {
  return BlksnapClient.connect(daemon.controlPath);
}

describe('backup repository', { skip: missing('nbdcopy', 'qemu-io', 'qemu-img') }, () => {
  it('a full and 5 incrementals of two devices under a writer restore bit-identical to the images at their takes; an incremental reads only the changed chunks', async () => {
    // b.img ends in a piece smaller than a page: the restore writes it through the page cache, the rest O_DIRECT.
    await withDaemon({ 'a.img': 32 * MiB, 'b.img': 16 * MiB + 2560 }, async (daemon, repo, dir) => {
      const client = await control(daemon);
      const w = writer(daemon, ['a.img', 'b.img']);
      try {
        const backups: Array<{ created: Awaited<ReturnType<typeof createBackup>>; copies: Record<string, string>; changed: Record<string, number> }> = [];
        for (let round = 0; round < 6; round++) {
          const copies: Record<string, string> = {};
          const changed: Record<string, number> = {};
          const previous = backups.at(-1)?.created.devices;
          const created = await createBackup(repo, client, {
            devices: ['a.img', 'b.img'],
            diffStorage: dir,
            afterTake: async (images) => {
              for (const { device, uri } of images) {
                copies[device] = path.join(dir, `${device}.${round}.copy`);
                await check('nbdcopy', [uri, copies[device] as string]);
                // Chunks the read map says changed since the previous backup: what an incremental may read.
                const mapFile = path.join(dir, `${device}.${round}.map`);
                await daemon.json('readcbtmap', '--device', device, '--file', mapFile);
                const k = previous?.find((d) => d.name === device)?.changesNumber ?? 0;
                changed[device] = [...fs.readFileSync(mapFile)].filter((b) => b > k).length;
              }
            },
          });
          backups.push({ created, copies, changed });
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.ok((await w.stop()) > 50, 'the writer wrote during the backups');
        for (const [round, b] of backups.entries()) {
          for (const d of b.created.devices) {
            assert.equal(d.mode, round === 0 ? 'full' : 'incremental', `${d.name} in backup ${round}`);
            if (round > 0) assert.ok(d.readBytes <= (b.changed[d.name] as number) * BLOCK, `${d.name} incremental ${round} read ${d.readBytes} bytes for ${b.changed[d.name]} changed chunks`);
            const restored = path.join(dir, `${d.name}.${round}.restored`);
            const r = await restoreBackup(repo, { id: b.created.id, device: d.name, to: restored });
            assert.equal(r.mode, 'file');
            await check('cmp', [restored, b.copies[d.name] as string]);
          }
        }
        const verified = await verifyRepository(repo, {});
        assert.equal(verified.ok, true, verified.problems.join('; '));
        assert.equal((await repo.list()).length, 6);
      } finally {
        await w.stop();
        await client.close();
      }
    });
  });

  it('640 scattered 64 KiB writes: the incremental stores at most 1.5× the 40 MiB changed; a new generation reads all, dedup keeps it small', async () => {
    await withDaemon({ 'big.img': 256 * MiB }, async (daemon, repo, dir) => {
      const client = await control(daemon);
      try {
        const nbd = await NbdClient.connect(daemon.uri('big.img'));
        for (let at = 0; at < 256 * MiB; at += 4 * MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        const packBytes = (): number => fs.readdirSync(path.join(repo.location, 'chunks')).filter((n) => n.endsWith('.pack')).reduce((a, n) => a + fs.statSync(path.join(repo.location, 'chunks', n)).size, 0);
        const full = await createBackup(repo, client, { devices: ['big.img'], diffStorage: dir });
        assert.equal(full.devices[0]?.storedBytes, packBytes(), 'storedBytes is what the packs grew by');
        const blocks = new Set<number>();
        while (blocks.size < 640) blocks.add(randomInt(256 * MiB / BLOCK));
        await Promise.all([...blocks].map((b) => nbd.write(b * BLOCK, randomFillSync(Buffer.alloc(BLOCK)))));
        await nbd.close();
        const before = packBytes();
        const incremental = await createBackup(repo, client, { devices: ['big.img'], diffStorage: dir });
        const d = incremental.devices[0] as Created['devices'][number];
        assert.equal(d.storedBytes, packBytes() - before, 'storedBytes is what the packs grew by');
        assert.equal(d.mode, 'incremental');
        assert.equal(d.readBytes, 40 * MiB, 'read exactly the changed blocks');
        assert.ok(d.storedBytes <= 1.5 * 40 * MiB, `stored ${d.storedBytes} bytes`);
        assert.ok(d.storedBytes >= 40 * MiB, 'random data does not compress: every changed byte is stored');

        // A new generation (detach and attach again): a full read, bit-identical, and nothing new stored.
        await client.call(api.DeviceDetach, { device: 'big.img' });
        await daemon.json('attach', '--device', path.join(dir, 'big.img'));
        const again = await createBackup(repo, client, { devices: ['big.img'], diffStorage: dir });
        const g = again.devices[0] as Created['devices'][number];
        assert.equal(g.mode, 'full');
        assert.notEqual(g.generationId, d.generationId);
        assert.equal(g.storedBytes, 0, 'a full read of unchanged data stores no chunk');
        const restored = path.join(dir, 'big.restored');
        await restoreBackup(repo, { id: again.id, device: 'big.img', to: restored });
        await check('cmp', [restored, path.join(dir, 'big.img')]);
        assert.equal((full.devices[0] as Created['devices'][number]).mode, 'full');
      } finally {
        await client.close();
      }
    });
  });

  it('a flipped byte in a chunk: verify names the chunk and exactly the backups using it; their restore fails naming the offset; the others restore', async () => {
    await withDaemon({ 'v.img': 8 * MiB }, async (daemon, repo, dir) => {
      const client = await control(daemon);
      try {
        const io = (c: string): Promise<string> => check('qemu-io', ['-f', 'raw', '-c', c, daemon.uri('v.img')]);
        await io('write -P 1 0 8M');
        const b1 = await createBackup(repo, client, { devices: ['v.img'], diffStorage: dir });
        await io('write -P 2 1M 64k'); // chunk 16 gets pattern 2: used by b2 and b3
        const b2 = await createBackup(repo, client, { devices: ['v.img'], diffStorage: dir });
        const b3 = await createBackup(repo, client, { devices: ['v.img'], diffStorage: dir });
        await io('write -P 3 1M 64k');
        const b4 = await createBackup(repo, client, { devices: ['v.img'], diffStorage: dir });
        // The chunk of pattern 2 over 64 KiB, found by its content's digest.
        const { createHash } = await import('node:crypto');
        const hex = createHash('sha256').update(Buffer.alloc(BLOCK, 2)).digest('hex');
        const where = (await ChunkIndex.load(repo.backend, repo.cipher)).require(Buffer.from(hex, 'hex'));
        const file = path.join(repo.location, 'chunks', `${where.pack}.pack`);
        const bytes = fs.readFileSync(file);
        const at = where.offset + RECORD_HEADER + (where.storedLength >> 1);
        bytes[at] = (bytes[at] as number) ^ 0x40;
        fs.writeFileSync(file, bytes);

        const r = await daemon.cli('backup_verify', '--repo', repo.location, '--json');
        assert.equal(r.code, 1, 'verify exits 1 on damage');
        const v = JSON.parse(r.stdout) as { ok: boolean; badChunks: string[]; damagedBackups: string[] };
        assert.equal(v.ok, false);
        assert.deepEqual(v.badChunks, [hex]);
        assert.deepEqual(v.damagedBackups.sort(), [b2.id, b3.id].sort());
        await assert.rejects(restoreBackup(repo, { id: b2.id, device: 'v.img', to: path.join(dir, 'r2') }), /offset 1048576.*damaged/);
        for (const b of [b1, b4]) await restoreBackup(repo, { id: b.id, device: 'v.img', to: path.join(dir, `r-${b.id}`) });
        await check('cmp', [path.join(dir, `r-${b4.id}`), path.join(dir, 'v.img')]);

        // Served as a device: sequential reads up to the damaged chunk load it ahead, together with its
        // neighbours; the neighbours still read, the damaged chunk fails (EIO), the daemon lives on.
        const served = await daemon.json<{ uri: string }>('backup_attach', '--repo', repo.location, '--id', b2.id, '--device', 'v.img', '--name', 'damaged');
        const nbd = await NbdClient.connect(served.uri);
        try {
          assert.ok((await nbd.read(0, 256 * KiB)).equals(Buffer.alloc(256 * KiB, 1)));
          // The next read follows the first: the chunks after it (the damaged one among them) load
          // ahead in one task, and the read sent with it of two chunks after the damaged one waits for that task.
          const [next, after] = await Promise.all([nbd.read(256 * KiB, 256 * KiB), nbd.read(MiB + BLOCK, 2 * BLOCK)]);
          assert.ok(next.equals(Buffer.alloc(256 * KiB, 1)));
          assert.ok(after.equals(Buffer.alloc(2 * BLOCK, 1)), 'the chunks after the damaged one');
          await assert.rejects(nbd.read(MiB, BLOCK), /EIO/);
          assert.ok((await nbd.read(4 * MiB, BLOCK)).equals(Buffer.alloc(BLOCK, 1)), 'a read after the failed one');
        } finally {
          await nbd.close();
        }
        assert.doesNotMatch(daemon.log, /BUG/, 'no rejection of a chunk loaded ahead went unhandled');

        // The damaged chunk's pack gone before the attach: the chunk is missing from the index, and
        // loading it ahead must not fail the reads before it.
        fs.rmSync(file);
        fs.rmSync(path.join(repo.location, 'chunks', `${where.pack}.idx`));
        const missing = await daemon.json<{ uri: string }>('backup_attach', '--repo', repo.location, '--id', b2.id, '--device', 'v.img', '--name', 'missing');
        const again = await NbdClient.connect(missing.uri);
        try {
          for (let at = 0; at < MiB; at += 256 * KiB) assert.ok((await again.read(at, 256 * KiB)).equals(Buffer.alloc(256 * KiB, 1)), `bytes at ${at} before the missing chunk`);
          await assert.rejects(again.read(MiB, BLOCK), /missing from the repository/);
          assert.ok((await again.read(MiB + BLOCK, BLOCK)).equals(Buffer.alloc(BLOCK, 1)), 'the chunk after the missing one');
        } finally {
          await again.close();
        }
        assert.doesNotMatch(daemon.log, /BUG/);
      } finally {
        await client.close();
      }
    });
  });

  it('kill -9 of backup_create at random moments leaves a repository that verifies, no partial backup and no snapshot; a prune during a backup deletes nothing it writes', async () => {
    await withDaemon({ 'k.img': 384 * MiB }, async (daemon, repo, dir) => {
      const nbd = await NbdClient.connect(daemon.uri('k.img'));
      for (let at = 0; at < 384 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
      await nbd.close();
      const create = (): ReturnType<typeof spawn> =>
        spawn(process.execPath, [blksnapCli, 'backup_create', '--repo', repo.location, '--device', 'k.img', '--diff-storage', dir, '--json'], {
          env: { ...process.env, BLKSNAP_CONTROL: daemon.controlPath },
          stdio: 'ignore',
        });
      let finished = 0;
      for (let round = 0; round < 3; round++) {
        const child = create();
        const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
        await new Promise((r) => setTimeout(r, 150 + randomInt(500)));
        child.kill('SIGKILL');
        if ((await exit) === 0) finished++; // it was quicker than the kill: a whole backup, as it should be
        // The daemon destroys the snapshot of the connection that went away.
        for (let i = 0; i < 50 && (await daemon.json<{ ids: string[] }>('snapshot_collect')).ids.length > 0; i++) await new Promise((r) => setTimeout(r, 100));
        assert.deepEqual((await daemon.json<{ ids: string[] }>('snapshot_collect')).ids, [], `round ${round}: no snapshot left`);
        const v = await verifyRepository(repo, {});
        assert.equal(v.ok, true, v.problems.join('; '));
        assert.equal((await repo.list()).length, finished, 'a killed backup is not visible');
      }
      assert.ok(finished < 3, 'at least one backup was killed mid-way');
      // A backup runs while a prune comes (grace 0): the prune takes no lock the backup holds, marks
      // the packs the backup is writing (no manifest names them yet) and deletes none of them.
      const running = create();
      const exited = new Promise<number | null>((r) => running.once('exit', (code) => r(code)));
      const sessions = path.join(repo.location, 'sessions');
      const isRunning = (): boolean => fs.existsSync(sessions) && fs.readdirSync(sessions).some((n) => fs.readFileSync(path.join(sessions, n), 'utf8').includes(`"pid":${running.pid},`));
      for (let i = 0; i < 500 && !isRunning(); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(isRunning(), 'the backup opened its session');
      const pruned = await pruneRepository(repo, { keepLast: 1, graceMs: 0 });
      assert.equal(await exited, 0, 'the backup finished');
      assert.equal(pruned.kept.length, Math.min(finished, 1), 'the policy kept the newest backup that was complete when it ran');
      assert.equal((await repo.list()).length, Math.min(finished, 1) + 1, 'that one and the one made during the prune');
      const v = await verifyRepository(repo, {});
      assert.equal(v.ok, true, v.problems.join('; '));
      assert.ok(!fs.readdirSync(path.join(repo.location, 'backups')).some((n) => n.startsWith('.') || n.includes('.tmp.')), 'the sweep removed what killed backups left');
      const after = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'k.img', '--diff-storage', dir);
      assert.equal(after.devices[0]?.mode, 'incremental');
    });
  });

  it('rollback onto the attached device writes only the blocks changed since the backup', async () => {
    await withDaemon({ 'r.img': 32 * MiB }, async (daemon, repo, dir) => {
      const client = await control(daemon);
      try {
        await check('qemu-io', ['-f', 'raw', '-c', 'write -P 5 0 32M', daemon.uri('r.img')]);
        const b = await createBackup(repo, client, { devices: ['r.img'], diffStorage: dir });
        const saved = path.join(dir, 'saved.img');
        fs.copyFileSync(path.join(dir, 'r.img'), saved);
        const nbd = await NbdClient.connect(daemon.uri('r.img'));
        const touched = new Set<number>();
        for (let i = 0; i < 40; i++) {
          const offset = randomInt(32 * MiB / 4096 - 16) * 4096;
          await nbd.write(offset, randomFillSync(Buffer.alloc(16 * 4096)));
          for (let c = Math.floor(offset / BLOCK); c <= Math.floor((offset + 16 * 4096 - 1) / BLOCK); c++) touched.add(c);
        }
        await nbd.close();
        const r = await restoreBackup(repo, { id: b.id, device: 'r.img', to: 'device:r.img', client });
        assert.equal(r.mode, 'rollback');
        assert.equal(r.writtenBytes, touched.size * BLOCK, 'exactly the changed blocks were written');
        const now = path.join(dir, 'now.img');
        await check('nbdcopy', [daemon.uri('r.img'), now]);
        await check('cmp', [now, saved]);
      } finally {
        await client.close();
      }
    });
  });

  it('a restore that fails on a damaged chunk has no write left in flight when it returns (its descriptors are not reused under a write)', async () => {
    await withDaemon({ 'f.img': 96 * MiB }, async (daemon, repo, dir) => {
      const client = await control(daemon);
      try {
        const nbd = await NbdClient.connect(daemon.uri('f.img'));
        for (let at = 0; at < 96 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        await nbd.close();
        const b = await createBackup(repo, client, { devices: ['f.img'], diffStorage: dir });
        // Damage a chunk of the second task sent (the first runs of the four fronts go first).
        const { createHash } = await import('node:crypto');
        const bytes = fs.readFileSync(path.join(dir, 'f.img')).subarray(5 * MiB, 5 * MiB + BLOCK);
        const where = (await ChunkIndex.load(repo.backend, repo.cipher)).require(createHash('sha256').update(bytes).digest());
        const pack = path.join(repo.location, 'chunks', `${where.pack}.pack`);
        const fd = fs.openSync(pack, 'r+');
        fs.writeSync(fd, Buffer.from([0x55]), 0, 1, where.offset + RECORD_HEADER + 100);
        fs.closeSync(fd);
        for (let round = 0; round < 3; round++) {
          // Files opened one after another while the restore runs and after: each takes the lowest
          // free descriptor, so one takes the target's as soon as the restore lets it go, and a
          // write still queued for the target lands in it. Each is kept open a while, then checked.
          let isRestoring = true;
          const open: Array<{ fd: number; file: string }> = [];
          const written: string[] = [];
          const check = (probe: { fd: number; file: string }): void => {
            if (fs.fstatSync(probe.fd).size > 0) written.push(probe.file);
            fs.closeSync(probe.fd);
          };
          let n = 0;
          const probing = (async () => {
            const until = { t: Number.POSITIVE_INFINITY };
            while (isRestoring || Date.now() < until.t) {
              if (!isRestoring && until.t === Number.POSITIVE_INFINITY) until.t = Date.now() + 300;
              const file = path.join(dir, `probe-${round}-${n++}`);
              open.push({ fd: fs.openSync(file, 'w+'), file });
              while (open.length > 64) check(open.shift() as { fd: number; file: string });
              await new Promise((r) => setTimeout(r, 1));
            }
            await new Promise((r) => setTimeout(r, 100));
            for (const probe of open.splice(0)) check(probe);
          })();
          await assert.rejects(restoreBackup(repo, { id: b.id, device: 'f.img', to: path.join(dir, `r${round}`) }), /offset 5242880.*damaged/);
          isRestoring = false;
          await probing;
          assert.deepEqual(written, [], 'files opened after the restore let its descriptors go were written');
        }
      } finally {
        await client.close();
      }
    });
  });

  it('content repeated on the device (stretches, one chunk 40 times, a short last chunk) restores bit-identical to a file and over NBD', async () => {
    const size = 16 * MiB + 12 * KiB;
    await withDaemon({ 'd.img': size, 'e.img': size }, async (daemon, repo, dir) => {
      const client = await control(daemon);
      try {
        const nbd = await NbdClient.connect(daemon.uri('d.img'));
        const stretch = randomFillSync(Buffer.alloc(MiB));
        for (const at of [0, 4 * MiB, 8 * MiB]) await nbd.write(at, stretch); // chunks 0-15 again at 64-79 and 128-143
        const chunk = randomFillSync(Buffer.alloc(BLOCK));
        const places = new Set<number>();
        while (places.size < 40) places.add(160 + randomInt(90)); // more copies than one group holds
        for (const c of places) await nbd.write(c * BLOCK, chunk);
        for (const c of [20, 21, 100]) await nbd.write(c * BLOCK, randomFillSync(Buffer.alloc(BLOCK)));
        // Neighbours whose copies are not neighbours: chunk 30 again at 252, chunk 31 at 90.
        for (const [c, copy] of [[30, 252], [31, 90]] as const) {
          const bytes = randomFillSync(Buffer.alloc(BLOCK));
          await nbd.write(c * BLOCK, bytes);
          await nbd.write(copy * BLOCK, bytes);
        }
        await nbd.write(16 * MiB, randomFillSync(Buffer.alloc(12 * KiB)));
        await nbd.flush();
        await nbd.close();
        const b = await createBackup(repo, client, { devices: ['d.img'], diffStorage: dir });
        const nonZero = (3 * 16 + 40 + 3 + 4) * BLOCK + 12 * KiB;

        const file = path.join(dir, 'restored.img');
        const r = await restoreBackup(repo, { id: b.id, device: 'd.img', to: file });
        assert.equal(r.writtenBytes, nonZero, 'every chunk with data written once, at its place');
        await check('cmp', [file, path.join(dir, 'd.img')]);
        // Blocks are allocated ahead of the writes only where chunks hold data: zero chunks stay holes.
        assert.ok(fs.statSync(file).blocks * 512 <= nonZero + 64 * KiB, `${fs.statSync(file).blocks * 512} bytes allocated for ${nonZero} of data`);

        // Over NBD onto a device of other content: zero chunks are written too.
        const target = await NbdClient.connect(daemon.uri('e.img'));
        for (let at = 0; at < size; at += MiB) await target.write(at, randomFillSync(Buffer.alloc(Math.min(MiB, size - at))));
        await target.close();
        const overNbd = await restoreBackup(repo, { id: b.id, device: 'd.img', to: daemon.uri('e.img') });
        assert.equal(overNbd.mode, 'nbd');
        assert.equal(overNbd.writtenBytes, size);
        await check('cmp', [path.join(dir, 'e.img'), path.join(dir, 'd.img')]);
      } finally {
        await client.close();
      }
    });
  });

  it('backup_attach serves a backup: qemu-img compare with its restore; --writable drops its writes at detach; --loop mounts an ext4 backup', { skip: missing('mkfs.ext4', 'losetup') }, async () => {
    await withDaemon({}, async (daemon, repo, dir) => {
      const mounts = new Mounts(dir);
      try {
        const dev = await daemon.json<{ blockDevice: string }>('attach', '--device', sparseFile(path.join(dir, 'fs.img'), 64 * MiB), '--name', 'fs', '--loop');
        await mkfs('ext4', dev.blockDevice);
        const mnt = await mounts.mount(dev.blockDevice, 'src');
        fs.writeFileSync(path.join(mnt, 'data.bin'), randomFillSync(Buffer.alloc(3 * MiB)));
        const sum = (await check('sha256sum', [path.join(mnt, 'data.bin')])).split(' ')[0];
        const badFronts = await daemon.cli('backup_create', '--repo', repo.location, '--device', 'fs', '--read-fronts', '0');
        assert.notEqual(badFronts.code, 0);
        assert.match(badFronts.stderr, /EINVAL: backup_create: --read-fronts takes 1 to 16, not '0'/);
        // One read front (a rotating disk's setting); the other backups here read at the default four.
        const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'fs', '--diff-storage', dir, '--read-fronts', '1');
        await mounts.umount(mnt);

        const restored = path.join(dir, 'fs.restored');
        await daemon.json('backup_restore', '--repo', repo.location, '--id', created.id, '--device', 'fs', '--to', restored);
        const served = await daemon.json<{ name: string; uri: string; readOnly: boolean }>('backup_attach', '--repo', repo.location, '--id', created.id, '--device', 'fs');
        assert.equal(served.readOnly, true);
        await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', restored, served.uri]);
        // While served, a prune keeps it whatever the policy says, and it stays readable.
        const newer = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'fs', '--diff-storage', dir);
        const held = await daemon.json<{ kept: string[]; removed: string[] }>('backup_prune', '--repo', repo.location, '--keep-last', '1');
        assert.deepEqual([held.kept.sort(), held.removed], [[created.id, newer.id].sort(), []]);
        await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', restored, served.uri]);
        const refused = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', served.uri]);
        assert.notEqual(refused.code === 0 && !/failed|Permission|read-only/i.test(refused.stdout + refused.stderr), true, 'a read-only backup refuses writes');
        await daemon.json('detach', '--device', served.name);

        const writable = await daemon.json<{ name: string; uri: string }>('backup_attach', '--repo', repo.location, '--id', created.id, '--device', 'fs', '--writable', '--name', 'scratch');
        await check('qemu-io', ['-f', 'raw', '-c', 'write -P 9 1000k 8k', writable.uri]);
        const read = await check('qemu-io', ['-f', 'raw', '-c', 'read -P 9 1000k 8k', writable.uri]);
        assert.match(read, /read 8192\/8192/);
        await daemon.json('detach', '--device', 'scratch');
        const again = await daemon.json<{ uri: string }>('backup_attach', '--repo', repo.location, '--id', created.id, '--device', 'fs', '--writable', '--name', 'scratch');
        await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', restored, again.uri]);
        await daemon.json('detach', '--device', 'scratch');

        const looped = await daemon.json<{ name: string; blockDevice: string }>('backup_attach', '--repo', repo.location, '--id', created.id, '--device', 'fs', '--loop');
        const ro = await mounts.mount(looped.blockDevice, 'backup', ['ro', 'noload']);
        assert.doesNotMatch(daemon.log, /EROFS/, 'a read-only backup is bound read-only: nothing tries to open it for writing');
        assert.equal((await check('sha256sum', [path.join(ro, 'data.bin')])).split(' ')[0], sum);
        await mounts.umount(ro);
        await daemon.json('detach', '--device', looped.name);
        const released = await daemon.json<{ removed: string[] }>('backup_prune', '--repo', repo.location, '--keep-last', '1');
        assert.deepEqual(released.removed, [created.id], 'detached, it goes by the policy');
      } finally {
        await mounts.cleanup();
      }
    });
  });

  it("backup_create reads over the daemon's TCP listener with TLS (PSK) and restores bit-identical", { skip: missing('openssl') }, async () => {
    const { dir: keys, remove } = tempDir('blksnap-psk-');
    try {
      const pskFile = path.join(keys, 'keys.psk');
      fs.writeFileSync(pskFile, `backup:${randomFillSync(Buffer.alloc(32)).toString('hex')}\n`, { mode: 0o600 });
      await withDaemon({ 't.img': 16 * MiB }, async (daemon, repo, dir) => {
        await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 2M 5M', daemon.uri('t.img')]);
        const port = /nbd tcp port (\d+)/.exec(daemon.log)?.[1];
        assert.ok(port, 'the daemon listens on TCP');
        const created = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 't.img', '--diff-storage', dir, '--nbd', `127.0.0.1:${port}`, '--tls-psk', pskFile);
        assert.equal(created.devices[0]?.readBytes, 5 * MiB, 'only the allocated data was read');
        const restored = path.join(dir, 't.restored');
        await daemon.json('backup_restore', '--repo', repo.location, '--id', created.id, '--device', 't.img', '--to', restored);
        await check('cmp', [restored, path.join(dir, 't.img')]);
        // In the clear, as asked for: the TLS listener refuses.
        const plain = await daemon.cli('backup_create', '--repo', repo.location, '--device', 't.img', '--diff-storage', dir, '--nbd', `127.0.0.1:${port}`, '--tls', 'off');
        assert.notEqual(plain.code, 0, 'without TLS the listener refuses');
        assert.match(plain.stderr, /EACCES|TLS/);
      }, ['--listen', '127.0.0.1:0', '--tls-psk', pskFile]);
    } finally {
      remove();
    }
  });

  it('backup_create --nbd without TLS credentials is refused unless --tls off says so', async () => {
    await withDaemon({ 'c.img': 8 * MiB }, async (daemon, repo, dir) => {
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5e 1M 2M', daemon.uri('c.img')]);
      const port = /nbd tcp port (\d+)/.exec(daemon.log)?.[1];
      const silent = await daemon.cli('backup_create', '--repo', repo.location, '--device', 'c.img', '--diff-storage', dir, '--nbd', `127.0.0.1:${port}`);
      assert.equal(silent.code, 22, silent.stderr);
      assert.match(silent.stderr, /EINVAL: backup_create: --nbd 127\.0\.0\.1:\d+ reads the images over the network: give --tls-certs DIR or --tls-psk FILE, or --tls off/);
      assert.equal((await repo.list()).length, 0, 'nothing was read or stored');
      const clear = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'c.img', '--diff-storage', dir, '--nbd', `127.0.0.1:${port}`, '--tls', 'off');
      assert.equal(clear.devices[0]?.readBytes, 2 * MiB);
    }, ['--listen', '127.0.0.1:0', '--tls', 'off']);
  });
});
