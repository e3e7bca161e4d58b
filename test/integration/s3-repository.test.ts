// A repository in an S3 bucket, against a real server: a single-node Ceph cluster's RADOS Gateway
// started from Debian's packages (or the endpoint BLKSNAP_TEST_S3_ENDPOINT names). Every verb through
// the CLI: init (encrypted), full and incremental backups, list, restore bit-identical, verify (a
// flipped byte in a pack object found and named, the restore refused), prune; whole packs as objects,
// never one per chunk; the prune lock by a conditional object (a live one of another host holds a
// second prune back, never a backup; an expired one and a dead local process's do not); two hosts
// backing up into one bucket at once while a third prunes without grace, each incremental on its own
// host's base, every backup bit-identical after; an incremental's requests (counted by the client)
// the same in a repository with 4× the backups; a backup killed mid-upload and one whose gateway dies
// leave no manifest and a sound repository; HTTPS with --s3-ca (and refused without it); clear
// errors for wrong keys, a missing bucket and a clock far off the server's.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DeleteBucketPolicyCommand, DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutBucketPolicyCommand, PutObjectCommand, PutObjectRetentionCommand } from '@aws-sdk/client-s3';
import { NbdClient } from '../../src/client/nbd-client.js';
import { withDaemon, writeRandomBlocks } from '../helpers/backup.js';
import { cephMissing, type S3Server, startS3 } from '../helpers/ceph.js';
import { blksnapCli } from '../helpers/daemon.js';
import { check, missing, type RunResult, run } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;

describe('a repository in an S3 bucket (Ceph RADOS Gateway)', { skip: missing('nbdcopy', 'cmp') || cephMissing() }, () => {
  let s3: S3Server;
  before(async () => {
    s3 = await startS3();
  });
  after(async () => {
    await s3?.stop();
  });

  /** The CLI with the server's credentials, against `daemon`'s control socket. */
  const cliOf = (control: string, cacheDir: string) => {
    const cli = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> =>
      run(process.execPath, [blksnapCli, ...args, ...(args.includes('--repo') || args.includes('--from') ? ['--s3-endpoint', s3.endpoint, '--cache-dir', cacheDir] : [])], { env: { ...process.env, ...s3.env, BLKSNAP_CONTROL: control, ...env }, timeoutMs: 180_000 });
    const json = async <T>(...args: string[]): Promise<T> => {
      const r = await cli([...args, '--json']);
      if (r.code !== 0) throw new Error(`blksnap ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
      return JSON.parse(r.stdout) as T;
    };
    return { cli, json };
  };

  /** Fills attached device `name` with random bytes (through the daemon) and makes a plain repository `repo`: the CLI for them. */
  const randomDeviceAndRepository = async (daemon: { uri(name: string): string; controlPath: string }, name: string, bytes: number, repo: string, dir: string): Promise<ReturnType<typeof cliOf>> => {
    const nbd = await NbdClient.connect(daemon.uri(name));
    for (let at = 0; at < bytes; at += 4 * MiB) await nbd.write(at, randomFillSync(Buffer.alloc(4 * MiB)));
    await nbd.flush();
    await nbd.close();
    const tools = cliOf(daemon.controlPath, path.join(dir, 'cache'));
    assert.equal((await tools.cli(['backup_init', '--repo', repo, '--encryption', 'none'])).code, 0);
    return tools;
  };

  const keysOf = async (bucket: string, prefix: string): Promise<string[]> => {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const r = await s3.client().send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
      for (const o of r.Contents ?? []) if (o.Key) keys.push(o.Key);
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return keys;
  };
  const getObject = async (bucket: string, key: string): Promise<Buffer> => Buffer.from(await ((await s3.client().send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
  const putObject = (bucket: string, key: string, body: Buffer): Promise<unknown> => s3.client().send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));

  it('init, full, incremental, list, restore bit-identical, verify (a flipped byte found), prune; packs whole, the cache emptied', async () => {
    const bucket = await s3.bucket();
    const repo = `s3://${bucket}/hosts/a`;
    await withDaemon({ 'd.img': 24 * MiB }, async (daemon, _local, dir) => {
      const cacheDir = path.join(dir, 'cache');
      const { cli, json } = cliOf(daemon.controlPath, cacheDir);
      const keyFile = path.join(dir, 'repo.key');
      assert.equal((await cli(['key', 'generate', '--file', keyFile])).code, 0);
      const nbd = await NbdClient.connect(daemon.uri('d.img'));
      try {
        for (let at = 0; at < 8 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        await nbd.write(8 * MiB, Buffer.from(Array.from({ length: 60_000 }, (_, i) => `line ${i} of some text\n`).join('')).subarray(0, 2 * MiB));
        await nbd.flush();
        const copy = async (name: string): Promise<string> => {
          const file = path.join(dir, name);
          await check('nbdcopy', [daemon.uri('d.img'), file]);
          return file;
        };

        const init = await json<{ repo: string; encryption: string }>('backup_init', '--repo', repo, '--key-file', keyFile);
        assert.equal(init.encryption, 'aes-256-gcm');
        assert.equal((await cli(['backup_init', '--repo', repo, '--key-file', keyFile])).code, 17, 'a second init is EEXIST');
        const b1 = await json<{ id: string; devices: Array<{ mode: string }> }>('backup_create', '--repo', repo, '--device', 'd.img', '--key-file', keyFile);
        assert.equal(b1.devices[0]?.mode, 'full');
        const copy1 = await copy('copy1');
        const touched = await writeRandomBlocks(nbd, 20, 24 * MiB, BLOCK);
        await nbd.flush();
        const b2 = await json<{ id: string; devices: Array<{ mode: string; readBytes: number }> }>('backup_create', '--repo', repo, '--device', 'd.img', '--key-file', keyFile);
        assert.equal(b2.devices[0]?.mode, 'incremental');
        assert.equal(b2.devices[0]?.readBytes, touched.size * BLOCK);
        const copy2 = await copy('copy2');
        const listed = await json<{ backups: Array<{ id: string }> }>('backup_list', '--repo', repo, '--key-file', keyFile);
        assert.deepEqual(listed.backups.map((b) => b.id), [b1.id, b2.id]);

        // The bucket holds the format's objects: packs whole (a few objects, never one per chunk), the manifest of each backup.
        const keys = await keysOf(bucket, 'hosts/a/');
        const packs = keys.filter((k) => k.endsWith('.pack'));
        assert.ok(packs.length >= 1 && packs.length <= 16, `${packs.length} packs`);
        assert.equal(keys.filter((k) => k.endsWith('.idx')).length, packs.length);
        for (const b of [b1, b2]) assert.ok(keys.includes(`hosts/a/backups/${b.id}/manifest.json`));
        assert.ok(keys.includes('hosts/a/config.json') && keys.some((k) => k.startsWith('hosts/a/keys/')));
        assert.ok(!keys.some((k) => k.startsWith('hosts/a/locks/') || k.startsWith('hosts/a/sessions/')), 'no lock or session object left behind');

        for (const [b, saved] of [[b1, copy1], [b2, copy2]] as const) {
          const to = path.join(dir, `restored-${b.id}`);
          assert.equal((await json<{ mode: string }>('backup_restore', '--repo', repo, '--key-file', keyFile, '--id', b.id, '--device', 'd.img', '--to', to)).mode, 'file');
          await check('cmp', [to, saved]);
        }
        const cached = fs.readdirSync(cacheDir, { recursive: true }).map(String);
        assert.ok(!cached.some((f) => f.endsWith('.pack')), `packs fetched for the restore are let go: ${cached.join(', ')}`);
        const verified = await json<{ ok: boolean; checkedChunks: number }>('backup_verify', '--repo', repo, '--key-file', keyFile);
        assert.equal(verified.ok, true);
        assert.ok(verified.checkedChunks >= (10 * MiB) / BLOCK);

        // A flipped byte in a chunk's sealed bytes in a pack object: verify names it, restore of that backup refuses and writes nothing; put back, all is well.
        const pack = packs[0] as string;
        const original = await getObject(bucket, pack);
        const bent = Buffer.from(original);
        // Inside the first record's sealed bytes (past its 48-byte header, which restore does not need).
        const at = 48 + 20;
        bent[at] = (bent[at] as number) ^ 0x01;
        await putObject(bucket, pack, bent);
        const damaged = await cli(['backup_verify', '--repo', repo, '--key-file', keyFile, '--json']);
        assert.equal(damaged.code, 1, damaged.stderr);
        const report = JSON.parse(damaged.stdout) as { ok: boolean; problems: string[]; damagedBackups: string[] };
        assert.equal(report.ok, false);
        assert.match(report.problems.join('\n'), /damaged|fails authentication/);
        const hurt = report.damagedBackups[0];
        assert.ok(hurt === b1.id || hurt === b2.id, `verify names the backup the bent chunk belongs to: ${report.damagedBackups}`);
        const refused = await cli(['backup_restore', '--repo', repo, '--key-file', keyFile, '--id', hurt, '--device', 'd.img', '--to', path.join(dir, 'refused')]);
        assert.notEqual(refused.code, 0, `restore of ${hurt} (${report.problems.join('; ')}): ${refused.stdout}`);
        assert.match(refused.stderr, /EIO/);
        assert.ok(!fs.existsSync(path.join(dir, 'refused')), 'nothing written');
        await putObject(bucket, pack, original);
        assert.equal((await json<{ ok: boolean }>('backup_verify', '--repo', repo, '--key-file', keyFile)).ok, true);

        // Prune to the newest: the older goes, the newer restores as before and verifies.
        const pruned = await json<{ removed: string[] }>('backup_prune', '--repo', repo, '--key-file', keyFile, '--keep-last', '1');
        assert.deepEqual(pruned.removed, [b1.id]);
        assert.ok(!(await keysOf(bucket, `hosts/a/backups/${b1.id}/`)).length, 'the pruned backup has no object left');
        const to = path.join(dir, 'after-prune');
        await json('backup_restore', '--repo', repo, '--key-file', keyFile, '--id', b2.id, '--device', 'd.img', '--to', to);
        await check('cmp', [to, copy2]);
        assert.equal((await json<{ ok: boolean }>('backup_verify', '--repo', repo, '--key-file', keyFile)).ok, true);
      } finally {
        await nbd.close();
      }
    });
  });

  it("an incremental's requests follow its change, not the repository: the same change costs the same in a repository with 4× the backups", async (t) => {
    const bucket = await s3.bucket();
    await withDaemon({ 'r.img': 24 * MiB }, async (daemon, _local, dir) => {
      const { json } = cliOf(daemon.controlPath, path.join(dir, 'cache'));
      const nbd = await NbdClient.connect(daemon.uri('r.img'));
      try {
        const change = async (seed: number): Promise<void> => {
          for (let i = 0; i < 12; i++) await nbd.write(((seed * 7 + i * 29) % 384) * BLOCK, randomFillSync(Buffer.alloc(BLOCK)));
          await nbd.flush();
        };
        for (let at = 0; at < 16 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        type Made = { devices: Array<{ mode: string }>; requests: Record<string, number> };
        const backup = (repo: string): Promise<Made> => json<Made>('backup_create', '--repo', repo, '--device', 'r.img');
        const [small, large] = [`s3://${bucket}/small`, `s3://${bucket}/large`];
        for (const repo of [small, large]) await json('backup_init', '--repo', repo, '--encryption', 'none');
        await backup(large);
        for (let k = 1; k <= 3; k++) {
          await change(k);
          assert.equal((await backup(large)).devices[0]?.mode, 'incremental');
        }
        await backup(small);
        await change(11);
        const inSmall = await backup(small);
        const inLarge = await backup(large);
        assert.equal(inSmall.devices[0]?.mode, 'incremental');
        assert.equal(inLarge.devices[0]?.mode, 'incremental');
        const total = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0);
        t.diagnostic(`requests of the incremental: 2 backups ${JSON.stringify(inSmall.requests)}, 5 backups ${JSON.stringify(inLarge.requests)}`);
        // Reads and listings alike; uploads differ only by how many workers' packs the change filled.
        for (const op of ['GetObject', 'ListObjectsV2', 'HeadObject']) assert.equal(inLarge.requests[op] ?? 0, inSmall.requests[op] ?? 0, `${op}: ${JSON.stringify(inSmall.requests)} against ${JSON.stringify(inLarge.requests)}`);
        assert.ok(Math.abs(total(inLarge.requests) - total(inSmall.requests)) <= 8, `${JSON.stringify(inSmall.requests)} against ${JSON.stringify(inLarge.requests)}`);
        assert.ok(total(inSmall.requests) < 60, `an incremental of 12 blocks made ${total(inSmall.requests)} requests`);
      } finally {
        await nbd.close();
      }
    });
  });

  it('a backup killed mid-upload, and one whose gateway dies mid-upload: no manifest, the repository verifies, the next backup restores bit-identical', async (t) => {
    const bucket = await s3.bucket();
    const repo = `s3://${bucket}/f`;
    await withDaemon({ 'f.img': 48 * MiB }, async (daemon, _local, dir) => {
      const cacheDir = path.join(dir, 'cache');
      const { json } = cliOf(daemon.controlPath, cacheDir);
      const nbd = await NbdClient.connect(daemon.uri('f.img'));
      try {
        for (let at = 0; at < 48 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        await nbd.flush();
      } finally {
        await nbd.close();
      }
      await json('backup_init', '--repo', repo, '--encryption', 'none');
      const manifests = async (): Promise<string[]> => (await keysOf(bucket, 'f/backups/')).filter((k) => k.endsWith('/manifest.json'));
      const packCount = async (): Promise<number> => (await keysOf(bucket, 'f/chunks/')).filter((k) => k.endsWith('.pack')).length;
      /** A backup uploading at 4 MiB/s (48 MiB: some 12 s, each worker's pack in turn), and a promise of its first pack in the bucket. */
      const slowBackup = async () => {
        const before = await packCount();
        const child = spawn(process.execPath, [blksnapCli, 'backup_create', '--repo', repo, '--device', 'f.img', '--json', '--s3-endpoint', s3.endpoint, '--cache-dir', cacheDir, '--limit-upload', '4M'], { env: { ...process.env, ...s3.env, BLKSNAP_CONTROL: daemon.controlPath }, stdio: ['ignore', 'pipe', 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const exited = new Promise<{ code: number | null; signal: string | null; stderr: string }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stderr })));
        const uploading = (async () => {
          const deadline = Date.now() + 60_000;
          while (Date.now() < deadline) {
            if ((await packCount()) > before) return;
            if (child.exitCode !== null) throw new Error(`the backup ended before its first pack was in place: ${stderr}`);
            await new Promise((r) => setTimeout(r, 100));
          }
          throw new Error('no pack within 60 s');
        })();
        return { child, exited, uploading };
      };

      const killed = await slowBackup();
      await killed.uploading;
      killed.child.kill('SIGKILL');
      assert.equal((await killed.exited).signal, 'SIGKILL');
      assert.deepEqual(await manifests(), [], 'a killed backup leaves no manifest');
      assert.equal((await json<{ ok: boolean }>('backup_verify', '--repo', repo)).ok, true);

      const cut = await slowBackup();
      await cut.uploading;
      assert.ok(s3.restartGateway, 'the gateway can be restarted');
      const started = Date.now();
      await s3.restartGateway(async () => {
        const r = await cut.exited;
        t.diagnostic(`the backup ended ${((Date.now() - started) / 1000).toFixed(1)} s after the gateway died: ${r.stderr.trim().split('\n').at(-1)}`);
        assert.notEqual(r.code, 0, 'a backup whose gateway is gone fails');
        assert.match(r.stderr, /EHOSTUNREACH|ECONNREFUSED|does not answer/);
      });
      assert.deepEqual(await manifests(), [], 'nor does a backup whose gateway died');

      const done = await json<{ id: string; devices: Array<{ mode: string }> }>('backup_create', '--repo', repo, '--device', 'f.img');
      assert.equal(done.devices[0]?.mode, 'full');
      const to = path.join(dir, 'restored');
      await json('backup_restore', '--repo', repo, '--id', done.id, '--device', 'f.img', '--to', to);
      await check('cmp', [to, path.join(dir, 'f.img')]);
      assert.equal((await json<{ ok: boolean }>('backup_verify', '--repo', repo)).ok, true);
      // The packs the dead backups left are nobody's, their sessions dead: a prune without grace deletes them.
      const packsBefore = await packCount();
      const pruned = await json<{ removedChunks: number; pending: { packs: number } }>('backup_prune', '--repo', repo, '--keep-last', '1', '--prune-grace', '0');
      assert.equal(pruned.pending.packs, 0, 'nothing left marked');
      assert.ok((await packCount()) < packsBefore, `the dead backups' packs are deleted (${packsBefore} before, ${await packCount()} after)`);
      assert.deepEqual(await keysOf(bucket, 'f/sessions/'), [], "the dead backups' sessions are tidied away");
      const verified = await json<{ ok: boolean }>('backup_verify', '--repo', repo);
      assert.equal(verified.ok, true);
    });
  });

  it('two hosts back up into one bucket at once while a third prunes: each incremental on its own host\'s base, every backup bit-identical', async () => {
    const bucket = await s3.bucket();
    const repo = `s3://${bucket}/shared`;
    await withDaemon({ 'd.img': 16 * MiB }, async (a, _la, dirA) => {
      await withDaemon({ 'd.img': 16 * MiB }, async (b, _lb, dirB) => {
        const hosts = [
          { name: 'host-a', daemon: a, dir: dirA, ...cliOf(a.controlPath, path.join(dirA, 'cache')) },
          { name: 'host-b', daemon: b, dir: dirB, ...cliOf(b.controlPath, path.join(dirB, 'cache')) },
        ];
        await hosts[0]?.json('backup_init', '--repo', repo, '--encryption', 'none');
        const fill = async (h: (typeof hosts)[number], blocks: number): Promise<void> => {
          const nbd = await NbdClient.connect(h.daemon.uri('d.img'));
          try {
            await writeRandomBlocks(nbd, blocks, 16 * MiB, BLOCK);
            await nbd.flush();
          } finally {
            await nbd.close();
          }
        };
        const made: Array<{ host: string; id: string; copy: string; mode: string }> = [];
        const round = async (n: number): Promise<void> => {
          const backups = hosts.map(async (h) => {
            const r = await h.json<{ id: string; devices: Array<{ mode: string }> }>('backup_create', '--repo', repo, '--device', 'd.img', '--host', h.name);
            const copy = path.join(h.dir, `copy-${n}`);
            await check('nbdcopy', [h.daemon.uri('d.img'), copy]);
            made.push({ host: h.name, id: r.id, copy, mode: r.devices[0]?.mode ?? '' });
          });
          // No grace: it marks the packs the running backups are writing and deletes none of them.
          const pruning = hosts[0]?.cli(['backup_prune', '--repo', repo, '--keep-last', '100', '--prune-grace', '0', '--json']);
          await Promise.all([...backups, pruning]);
          const pruned = await pruning;
          assert.equal(pruned?.code, 0, pruned?.stderr);
        };
        for (const h of hosts) await fill(h, 64);
        await round(1);
        // Nothing is written between a backup and its copy: each copy is what its backup holds.
        for (const h of hosts) await fill(h, 10);
        await round(2);
        assert.deepEqual(made.filter((m) => m.mode === 'incremental').map((m) => m.host).sort(), ['host-a', 'host-b'], 'the second backup of each host is an incremental of its own first');
        const listed = await hosts[1]?.json<{ backups: Array<{ id: string; host: string }> }>('backup_list', '--repo', repo);
        for (const m of made) assert.equal(listed?.backups.find((x) => x.id === m.id)?.host, m.host);
        // With no backup running, a last prune deletes what nobody references and unmarks the rest.
        const last = await hosts[0]?.json<{ removed: string[]; pending: { packs: number; pages: number } }>('backup_prune', '--repo', repo, '--keep-last', '100', '--prune-grace', '0');
        assert.deepEqual([last?.removed, last?.pending.packs, last?.pending.pages], [[], 0, 0]);
        for (const m of made) {
          const h = hosts.find((x) => x.name === m.host) as (typeof hosts)[number];
          const to = path.join(h.dir, `restored-${m.id}`);
          await h.json('backup_restore', '--repo', repo, '--id', m.id, '--device', 'd.img', '--to', to);
          await check('cmp', [to, m.copy]);
        }
        assert.equal((await hosts[0]?.json<{ ok: boolean }>('backup_verify', '--repo', repo))?.ok, true);
      });
    });
  });

  it('backup_copy: a local repository to a bucket, that bucket to a second one under another key; only the chunks a target lacks move, each copy restores bit-identical, is the base of the next copy and is prunable there', async () => {
    const [bucketA, bucketB] = [await s3.bucket(), await s3.bucket()];
    const [siteA, siteB] = [`s3://${bucketA}/site-a`, `s3://${bucketB}`];
    await withDaemon({ 'c.img': 16 * MiB }, async (daemon, local, dir) => {
      const { cli, json } = cliOf(daemon.controlPath, path.join(dir, 'cache'));
      const keyA = path.join(dir, 'a.key');
      const keyB = path.join(dir, 'b.key');
      for (const k of [keyA, keyB]) assert.equal((await cli(['key', 'generate', '--file', k])).code, 0);
      await json('backup_init', '--repo', siteA, '--key-file', keyA);
      await json('backup_init', '--repo', siteB, '--key-file', keyB);
      const nbd = await NbdClient.connect(daemon.uri('c.img'));
      type Made = { id: string };
      type Copied = { copied: Array<{ id: string; copiedChunks: number; presentChunks: number }>; present: string[] };
      const copies: Array<{ id: string; file: string }> = [];
      const backup = async (n: number): Promise<void> => {
        const made = await json<Made>('backup_create', '--repo', local.location, '--device', 'c.img');
        const file = path.join(dir, `copy-${n}`);
        await check('nbdcopy', [daemon.uri('c.img'), file]);
        copies.push({ id: made.id, file });
      };
      try {
        for (let at = 0; at < 12 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        await nbd.flush();
        await backup(1);
        // local → bucket (plain to encrypted: every chunk read, named under the bucket's key, stored).
        const first = await json<Copied>('backup_copy', '--from', local.location, '--to', siteA, '--to-key-file', keyA);
        assert.deepEqual(first.copied.map((c) => c.id), [copies[0]?.id]);
        assert.ok((first.copied[0]?.copiedChunks ?? 0) >= (12 * MiB) / BLOCK, `every chunk moved: ${JSON.stringify(first.copied)}`);
        assert.deepEqual((await json<Copied>('backup_copy', '--from', local.location, '--to', siteA, '--to-key-file', keyA)).copied, [], 'a second copy finds it there');

        const touched = await writeRandomBlocks(nbd, 6, 16 * MiB, BLOCK);
        await nbd.flush();
        await backup(2);
        const second = await json<Copied>('backup_copy', '--from', local.location, '--to', siteA, '--to-key-file', keyA, '--latest');
        assert.equal(second.copied[0]?.id, copies[1]?.id);
        assert.ok((second.copied[0]?.copiedChunks ?? 0) <= touched.size, `only the change moved: ${JSON.stringify(second.copied)} for ${touched.size} blocks written`);

        // bucket → bucket under another key, every backup the target lacks.
        const toB = await json<Copied>('backup_copy', '--from', siteA, '--key-file', keyA, '--to', siteB, '--to-key-file', keyB);
        assert.deepEqual(toB.copied.map((c) => c.id), copies.map((c) => c.id));
        for (const [site, key] of [[siteA, keyA], [siteB, keyB]] as const) {
          for (const c of copies) {
            const to = path.join(dir, `restored-${c.id}-${site === siteA ? 'a' : 'b'}`);
            await json('backup_restore', '--repo', site, '--key-file', key, '--id', c.id, '--device', 'c.img', '--to', to);
            await check('cmp', [to, c.file]);
          }
          assert.equal((await json<{ ok: boolean }>('backup_verify', '--repo', site, '--key-file', key)).ok, true);
        }
        const listed = await json<{ backups: Array<{ id: string; host: string }> }>('backup_list', '--repo', siteB, '--key-file', keyB);
        assert.deepEqual(listed.backups.map((b) => b.host), [os.hostname(), os.hostname()], 'a copy keeps its host');
        // A copy is a backup of the target like any other: pruned there, the other still restores.
        const pruned = await json<{ removed: string[] }>('backup_prune', '--repo', siteB, '--key-file', keyB, '--keep-last', '1', '--prune-grace', '0');
        assert.deepEqual(pruned.removed, [copies[0]?.id]);
        const last = path.join(dir, 'restored-last');
        await json('backup_restore', '--repo', siteB, '--key-file', keyB, '--id', copies[1]?.id as string, '--device', 'c.img', '--to', last);
        await check('cmp', [last, copies[1]?.file as string]);
        assert.equal((await json<{ ok: boolean }>('backup_verify', '--repo', siteB, '--key-file', keyB)).ok, true);
        // An id that is not one is a usage error.
        const refused = await cli(['backup_copy', '--from', siteA, '--key-file', keyA, '--to', local.location, '--id', 'nonsense', '--json']);
        assert.equal(refused.code, 22, refused.stderr);
      } finally {
        await nbd.close();
      }
    });
  });

  it('Object Lock: objects a backup needs written retained, what a new backup reuses extended, a retained backup kept by prune and named; credentials that may not delete still back up', async () => {
    const bucket = await s3.bucket({ objectLock: true });
    const repo = `s3://${bucket}`;
    await withDaemon({ 'o.img': 8 * MiB }, async (daemon, _local, dir) => {
      const { cli, json } = cliOf(daemon.controlPath, path.join(dir, 'cache'));
      const plainBucket = await s3.bucket();
      const refused = await cli(['backup_init', '--repo', `s3://${plainBucket}`, '--encryption', 'none', '--object-lock', '1', '--json']);
      assert.equal(refused.code, 95, refused.stderr);
      assert.match(refused.stderr, /ENOTSUP: .*not made with S3 Object Lock/);
      // Governance mode: the test itself may shorten a retention (compliance would let nobody).
      await json('backup_init', '--repo', repo, '--encryption', 'none', '--object-lock', '1', '--object-lock-mode', 'governance');
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x31 0 4M', daemon.uri('o.img')]);
      const b1 = await json<{ id: string }>('backup_create', '--repo', repo, '--device', 'o.img');
      const head = (key: string) => s3.client().send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      const day = 86_400_000;
      const packs = (await keysOf(bucket, 'chunks/')).filter((k) => k.endsWith('.pack'));
      for (const key of [...packs, `backups/${b1.id}/manifest.json`, 'config.json']) {
        const h = await head(key);
        assert.equal(h.ObjectLockMode, 'GOVERNANCE', key);
        assert.ok(Math.abs((h.ObjectLockRetainUntilDate?.getTime() ?? 0) - (Date.now() + day)) < 5 * 60_000, `${key} retained a day: ${h.ObjectLockRetainUntilDate?.toISOString()}`);
      }
      // The first backup's packs as if written long ago: their retention ends within the minute.
      for (const key of packs) await s3.client().send(new PutObjectRetentionCommand({ Bucket: bucket, Key: key, BypassGovernanceRetention: true, Retention: { Mode: 'GOVERNANCE', RetainUntilDate: new Date(Date.now() + 60_000) } }));
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x32 0 64k', daemon.uri('o.img')]);
      const b2 = await json<{ id: string; devices: Array<{ mode: string }> }>('backup_create', '--repo', repo, '--device', 'o.img');
      assert.equal(b2.devices[0]?.mode, 'incremental');
      for (const key of packs) assert.ok((((await head(key)).ObjectLockRetainUntilDate?.getTime() ?? 0) - Date.now()) >= day - 5 * 60_000, `${key}, which the second backup reuses, is retained at least as long as that backup`);
      // Prune keeps what the bucket retains and says so.
      const pruned = await cli(['backup_prune', '--repo', repo, '--keep-last', '1', '--prune-grace', '0', '--json']);
      assert.equal(pruned.code, 0, pruned.stderr);
      assert.deepEqual((JSON.parse(pruned.stdout) as { removed: string[] }).removed, []);
      assert.match(pruned.stderr, new RegExp(`backup ${b1.id} is retained by the bucket until .*: kept`));
      // Append-only use: a policy denies every delete; backups go on (their session objects stay, to expire).
      const policy = { Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: ['s3:DeleteObject', 's3:DeleteObjectVersion'], Resource: [`arn:aws:s3:::${bucket}/*`] }] };
      await s3.client().send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
      try {
        const sessionsBefore = (await keysOf(bucket, 'sessions/')).length;
        await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 1M 64k', daemon.uri('o.img')]);
        const b3 = await cli(['backup_create', '--repo', repo, '--device', 'o.img', '--json']);
        assert.equal(b3.code, 0, `a backup with credentials that may not delete: ${b3.stderr}`);
        assert.equal((await keysOf(bucket, 'sessions/')).length, sessionsBefore + 1, 'its session object could not be removed: it stays, to expire');
        const to = path.join(dir, 'restored');
        await json('backup_restore', '--repo', repo, '--id', (JSON.parse(b3.stdout) as { id: string }).id, '--device', 'o.img', '--to', to);
        await check('cmp', [to, path.join(dir, 'o.img')]);
      } finally {
        await s3.client().send(new DeleteBucketPolicyCommand({ Bucket: bucket }));
      }
    });
  });

  it('backup_attach of a backup in a bucket: served as a device, read by range, bit-identical; kept by a prune while served; the credentials never in the daemon\'s log; rollback from the bucket', async () => {
    const bucket = await s3.bucket();
    const repo = `s3://${bucket}/vm`;
    await withDaemon({ 'v.img': 16 * MiB }, async (daemon, _local, dir) => {
      const { cli, json } = cliOf(daemon.controlPath, path.join(dir, 'cache'));
      const keyFile = path.join(dir, 'v.key');
      assert.equal((await cli(['key', 'generate', '--file', keyFile])).code, 0);
      await json('backup_init', '--repo', repo, '--key-file', keyFile);
      const nbd = await NbdClient.connect(daemon.uri('v.img'));
      try {
        for (let at = 0; at < 10 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
        await nbd.flush();
      } finally {
        await nbd.close();
      }
      const copy = path.join(dir, 'v.copy');
      await check('nbdcopy', [daemon.uri('v.img'), copy]);
      const b1 = await json<{ id: string }>('backup_create', '--repo', repo, '--device', 'v.img', '--key-file', keyFile);
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 0 1M', daemon.uri('v.img')]);
      const b2 = await json<{ id: string }>('backup_create', '--repo', repo, '--device', 'v.img', '--key-file', keyFile);
      const served = await json<{ name: string; uri: string; readOnly: boolean }>('backup_attach', '--repo', repo, '--key-file', keyFile, '--id', b1.id, '--device', 'v.img');
      assert.equal(served.readOnly, true);
      await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', copy, served.uri]);
      // Served, it is kept whatever the policy says, and still reads the same.
      const pruned = await json<{ kept: string[]; removed: string[] }>('backup_prune', '--repo', repo, '--key-file', keyFile, '--keep-last', '1', '--prune-grace', '0');
      assert.deepEqual([pruned.kept.sort(), pruned.removed], [[b1.id, b2.id].sort(), []]);
      await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', copy, served.uri]);
      await json('detach', '--device', served.name);
      // Rollback from the bucket: the attached device, of the backup's generation, gets back only what changed since.
      const rolledBack = await json<{ mode: string; writtenBytes: number }>('backup_restore', '--repo', repo, '--key-file', keyFile, '--id', b1.id, '--device', 'v.img', '--to', 'device:v.img');
      assert.equal(rolledBack.mode, 'rollback');
      assert.ok(rolledBack.writtenBytes <= 2 * MiB, `only the 1 MiB written since (in whole chunks): ${rolledBack.writtenBytes}`);
      await check('cmp', [path.join(dir, 'v.img'), copy]);
      const released = await json<{ removed: string[] }>('backup_prune', '--repo', repo, '--key-file', keyFile, '--keep-last', '1', '--prune-grace', '0');
      assert.deepEqual(released.removed, [b1.id], 'detached, it goes by the policy');
      assert.ok(!daemon.log.includes(s3.secretKey), "the bucket's secret key is not in the daemon's log");
      assert.match(daemon.log, /attached backup .* in s3:\/\//);
    });
  });

  it('the prune lock: a conditional object; a live one of another host holds a second prune back, naming its holder, never a backup; an expired one, or a dead local process\'s, does not', async () => {
    const bucket = await s3.bucket();
    const repo = `s3://${bucket}`;
    await withDaemon({ 'l.img': 4 * MiB }, async (daemon, _local, dir) => {
      const { cli, json } = cliOf(daemon.controlPath, path.join(dir, 'cache'));
      await json('backup_init', '--repo', repo, '--encryption', 'none');
      const prune = (): Promise<RunResult> => cli(['backup_prune', '--repo', repo, '--keep-last', '1', '--json']);
      const lock = (host: string, machineId: string, pid: number, refreshed: number): Promise<unknown> => putObject(bucket, 'locks/prune.json', Buffer.from(JSON.stringify({ token: 'other', host, machineId, pid, refreshed })));
      const machineId = fs.readFileSync('/etc/machine-id', 'utf8').trim();

      await lock('another-host', 'feedfacefeedfacefeedfacefeedface', 4242, Date.now());
      const backedUp = await cli(['backup_create', '--repo', repo, '--device', 'l.img', '--json']);
      assert.equal(backedUp.code, 0, `a backup takes no lock: ${backedUp.stderr}`);
      let done = false;
      const held = prune().then((r) => {
        done = true;
        return r;
      });
      await new Promise((r) => setTimeout(r, 4000));
      assert.equal(done, false, 'a second prune waits while the prune lock is live');
      await s3.client().send(new DeleteObjectCommand({ Bucket: bucket, Key: 'locks/prune.json' }));
      const r = await held;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /waiting for another prune \(the prune lock is held by pid 4242 on another-host/);
      assert.deepEqual(await keysOf(bucket, 'locks/'), [], 'the release removes its lock object');

      await lock('another-host', 'feedfacefeedfacefeedfacefeedface', 4242, Date.now() - 3_600_000);
      const expired = await prune();
      assert.equal(expired.code, 0, expired.stderr);
      assert.doesNotMatch(expired.stderr, /waiting/, 'an expired lease does not bind');

      // Above the kernel's largest pid (2^22): no process has it.
      await lock(os.hostname(), machineId, 2 ** 22 + 12345, Date.now());
      const dead = await prune();
      assert.equal(dead.code, 0, dead.stderr);
      assert.doesNotMatch(dead.stderr, /waiting/, "a lock of a process gone from this machine does not bind");

      // Two prunes racing for it: each gets it in turn, never both (the gateway's If-None-Match).
      const both = await Promise.all([prune(), prune()]);
      for (const b of both) assert.equal(b.code, 0, b.stderr);
    });
  });

  it('HTTPS: the gateway\'s certificate trusted by --s3-ca; without it refused, naming the certificate', async (t) => {
    if (!s3.https) return t.skip('the S3 server given has no HTTPS endpoint of the test CA');
    const https = s3.https;
    const bucket = await s3.bucket();
    const repo = `s3://${bucket}`;
    await withDaemon({ 't.img': 2 * MiB }, async (daemon, _local, dir) => {
      const env = { ...process.env, ...s3.env, BLKSNAP_CONTROL: daemon.controlPath };
      const cli = (...args: string[]): Promise<RunResult> => run(process.execPath, [blksnapCli, ...args, '--s3-endpoint', https.endpoint, '--cache-dir', path.join(dir, 'cache')], { env, timeoutMs: 120_000 });
      const untrusted = await cli('backup_init', '--repo', repo, '--encryption', 'none');
      assert.notEqual(untrusted.code, 0, 'a certificate no trusted CA signed is refused');
      assert.match(untrusted.stderr, /EPROTO: .*certificate of https:\/\/127\.0\.0\.1:\d+ is not trusted .*--s3-ca/);
      assert.equal((await cli('backup_init', '--repo', repo, '--encryption', 'none', '--s3-ca', https.caFile)).code, 0);
      const made = await cli('backup_create', '--repo', repo, '--device', 't.img', '--s3-ca', https.caFile, '--json');
      assert.equal(made.code, 0, made.stderr);
      const to = path.join(dir, 'back');
      const restored = await cli('backup_restore', '--repo', repo, '--id', (JSON.parse(made.stdout) as { id: string }).id, '--device', 't.img', '--to', to, '--s3-ca', https.caFile);
      assert.equal(restored.code, 0, restored.stderr);
      await check('cmp', [to, path.join(dir, 't.img')]);
    });
  });

  it("a pack's bytes go unsigned but checked: each part and pack PUT carries a signed Content-MD5, and a byte changed on the way is refused by the gateway, the backup failing with nothing committed", async () => {
    const bucket = await s3.bucket();
    const repo = `s3://${bucket}/md5`;
    await withDaemon({ 'm.img': 40 * MiB }, async (daemon, _local, dir) => {
      const { cli } = await randomDeviceAndRepository(daemon, 'm.img', 40 * MiB, repo, dir);
      // Between the CLI and the gateway: notes how each pack's bytes are signed, and flips the first
      // byte of the first body it sees of a pack (an attacker or a broken link on an unsigned payload).
      const target = new URL(s3.endpoint);
      const seen: Array<{ payload: string; signed: string }> = [];
      let flipped = false;
      const proxy = http.createServer((req, res) => {
        const isPack = req.method === 'PUT' && /\/chunks\/[0-9a-f]+\.pack/.test(req.url ?? '');
        if (isPack) seen.push({ payload: String(req.headers['x-amz-content-sha256']), signed: String(req.headers.authorization).replace(/.*SignedHeaders=([^,]*).*/, '$1') });
        const forward = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        });
        forward.on('error', () => res.destroy());
        let first = isPack && !flipped;
        if (first) flipped = true;
        req.on('data', (piece: Buffer) => {
          if (first && piece.length > 0) {
            piece[0] = (piece[0] as number) ^ 0xff;
            first = false;
          }
          forward.write(piece);
        });
        req.on('end', () => forward.end());
      });
      await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
      try {
        const made = await run(process.execPath, [blksnapCli, 'backup_create', '--repo', repo, '--device', 'm.img', '--s3-endpoint', `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, '--cache-dir', path.join(dir, 'cache')], { env: { ...process.env, ...s3.env, BLKSNAP_CONTROL: daemon.controlPath }, timeoutMs: 180_000 });
        assert.equal(made.code, 5, made.stderr);
        assert.match(made.stderr, /EIO: .*chunks\/[0-9a-f]+\.pack.*BadDigest/);
      } finally {
        proxy.closeAllConnections();
        await new Promise((r) => proxy.close(r));
      }
      assert.ok(seen.length > 0 && flipped, 'a pack went through the proxy');
      for (const s of seen) {
        assert.equal(s.payload, 'UNSIGNED-PAYLOAD');
        assert.ok(s.signed.split(';').includes('content-md5'), `the Content-MD5 is signed (SignedHeaders=${s.signed})`);
      }
      assert.deepEqual((await keysOf(bucket, 'md5/backups/')).filter((k) => k.endsWith('manifest.json')), [], 'no manifest');
      // Straight to the gateway, the next backup is whole.
      const again = await cli(['backup_create', '--repo', repo, '--device', 'm.img', '--json']);
      assert.equal(again.code, 0, again.stderr);
      const to = path.join(dir, 'back');
      assert.equal((await cli(['backup_restore', '--repo', repo, '--id', (JSON.parse(again.stdout) as { id: string }).id, '--device', 'm.img', '--to', to])).code, 0);
      await check('nbdcopy', [daemon.uri('m.img'), path.join(dir, 'device.img')]);
      await check('cmp', [to, path.join(dir, 'device.img')]);
    });
  });

  it("a backup's requests share a few kept-alive connections: no part costs a connection of its own", async () => {
    const bucket = await s3.bucket();
    const repo = `s3://${bucket}/conn`;
    await withDaemon({ 'k.img': 128 * MiB }, async (daemon, _local, dir) => {
      await randomDeviceAndRepository(daemon, 'k.img', 128 * MiB, repo, dir);
      // A TCP relay in front of the gateway counts the connections the CLI opens (a server that
      // answers "Connection: close" shows through it, as an HTTP proxy's own keep-alive would hide).
      const target = new URL(s3.endpoint);
      let connections = 0;
      const open = new Set<net.Socket>();
      const relay = net.createServer((from) => {
        connections++;
        open.add(from);
        from.on('close', () => open.delete(from));
        const to = net.connect(Number(target.port), target.hostname);
        from.pipe(to).on('error', () => from.destroy());
        to.pipe(from).on('error', () => to.destroy());
        from.on('error', () => to.destroy());
        to.on('error', () => from.destroy());
      });
      await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
      try {
        const made = await run(process.execPath, [blksnapCli, 'backup_create', '--repo', repo, '--device', 'k.img', '--s3-endpoint', `http://127.0.0.1:${(relay.address() as AddressInfo).port}`, '--cache-dir', path.join(dir, 'cache'), '--json'], { env: { ...process.env, ...s3.env, BLKSNAP_CONTROL: daemon.controlPath }, timeoutMs: 180_000 });
        assert.equal(made.code, 0, made.stderr);
        const requests = (JSON.parse(made.stdout) as { requests: Record<string, number> }).requests;
        // 128 MiB of random data: at least 16 parts of 8 MiB, by UploadPart or PutObject.
        assert.ok((requests.UploadPart ?? 0) + (requests.PutObject ?? 0) >= 16, JSON.stringify(requests));
        // A few requests run at once (four uploads, index pages and indexes, a heartbeat): each connection carries many (8 here; 21 when each part closed its connection).
        assert.ok(connections <= 12, `${connections} connections for ${JSON.stringify(requests)}`);
      } finally {
        for (const socket of open) socket.destroy();
        await new Promise((r) => relay.close(r));
      }
    });
  });

  it('clear errors: a missing bucket is ENOENT naming it, wrong credentials EACCES, a wrong key EACCES, a clock 20 minutes off the server\'s EIO saying so', async () => {
    const bucket = await s3.bucket();
    await withDaemon({ 'x.img': MiB }, async (daemon, _local, dir) => {
      const { cli } = cliOf(daemon.controlPath, path.join(dir, 'cache'));
      const noBucket = await cli(['backup_init', '--repo', 's3://no-such-bucket-here/x', '--encryption', 'none']);
      assert.equal(noBucket.code, 2, noBucket.stderr);
      assert.match(noBucket.stderr, /ENOENT: .*NoSuchBucket.*make the bucket first/);
      const badKeys = await cli(['backup_init', '--repo', `s3://${bucket}`, '--encryption', 'none'], { AWS_SECRET_ACCESS_KEY: 'wrong' });
      assert.equal(badKeys.code, 13, badKeys.stderr);
      assert.match(badKeys.stderr, /EACCES: .*AWS_SECRET_ACCESS_KEY/);
      const key = path.join(dir, 'k');
      const other = path.join(dir, 'k2');
      await cli(['key', 'generate', '--file', key]);
      await cli(['key', 'generate', '--file', other]);
      assert.equal((await cli(['backup_init', '--repo', `s3://${bucket}/enc`, '--key-file', key])).code, 0);
      const wrong = await cli(['backup_list', '--repo', `s3://${bucket}/enc`, '--key-file', other]);
      assert.equal(wrong.code, 13, wrong.stderr);
      const badRepo = await cli(['backup_list', '--repo', 's3://Bad_Bucket']);
      assert.equal(badRepo.code, 22, badRepo.stderr);
      // A server whose clock is 20 minutes ahead of this host's: the gateway behind a proxy that
      // moves the Date of each answer (this host's requests are signed right, so only the Date tells).
      const target = new URL(s3.endpoint);
      const proxy = http.createServer((req, res) => {
        const forward = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (answer) => {
          res.writeHead(answer.statusCode ?? 502, { ...answer.headers, date: new Date(Date.now() + 20 * 60_000).toUTCString() });
          answer.pipe(res);
        });
        forward.on('error', () => res.destroy());
        req.pipe(forward);
      });
      await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
      try {
        const skewed = await run(process.execPath, [blksnapCli, 'backup_list', '--repo', `s3://${bucket}/enc`, '--key-file', key, '--s3-endpoint', `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, '--cache-dir', path.join(dir, 'cache')], { env: { ...process.env, ...s3.env }, timeoutMs: 60_000 });
        assert.equal(skewed.code, 5, skewed.stderr);
        assert.match(skewed.stderr, /EIO: .*clock is 1[12]\d\d s behind the clock of http:\/\/127\.0\.0\.1:\d+ .*NTP/);
      } finally {
        proxy.closeAllConnections();
        await new Promise((r) => proxy.close(r));
      }
    });
  });
});
