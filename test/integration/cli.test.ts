// The blksnap tool and the daemon's process life: --help, --json documents, errno-named errors, SIGTERM.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { blksnapCli, repoRoot, blksnapd, TestDaemon } from '../helpers/daemon.js';
import { run, sparseFile, tempDir } from '../helpers/tools.js';

const COMMANDS = ['version', 'attach', 'detach', 'list', 'cbtinfo', 'readcbtmap', 'markdirtyblock'];

describe('blksnap CLI', () => {
  let daemon: TestDaemon;
  let tmp: { dir: string; remove: () => void };

  before(async () => {
    tmp = tempDir();
    daemon = await TestDaemon.start();
  });
  after(async () => {
    await daemon?.stop();
    tmp?.remove();
  });

  it('--help lists every command, and each command has its own --help', async () => {
    const top = await run(process.execPath, [blksnapCli, '--help']);
    assert.equal(top.code, 0);
    for (const c of COMMANDS) {
      assert.match(top.stdout, new RegExp(`^  ${c} `, 'm'));
      const r = await run(process.execPath, [blksnapCli, c, '--help']);
      assert.equal(r.code, 0, c);
      assert.match(r.stdout, new RegExp(`^Usage: blksnap ${c}`), c);
      assert.match(r.stdout, /--json/);
    }
    const d = await run(process.execPath, [blksnapd, '--help']);
    assert.match(d.stdout, /--control PATH/);
    assert.match(d.stdout, /--listen HOST:PORT/);
  });

  it('attach, list, cbtinfo and detach print the documented JSON fields', async () => {
    const file = sparseFile(path.join(tmp.dir, 'vol'), 3 * 1024 * 1024);
    const a = await daemon.json<Record<string, unknown>>('attach', '--device', file, '--name', 'vol1');
    assert.deepEqual(
      { name: a.name, path: a.path, size: a.size, uri: a.uri },
      { name: 'vol1', path: file, size: 3 * 1024 * 1024, uri: `nbd+unix:///vol1?socket=${daemon.nbdPath}` },
    );
    const list = await daemon.json<{ devices: Array<Record<string, unknown>> }>('list');
    assert.deepEqual(list.devices.map((d) => d.name), ['vol1']);
    const info = await daemon.json<Record<string, unknown>>('cbtinfo', '--device', file);
    assert.deepEqual(Object.keys(info).sort(), ['blockCount', 'blockSize', 'changesNumber', 'deviceCapacity', 'generationId', 'origin', 'originReason']);
    assert.deepEqual([info.origin, info.originReason], ['new', 'first attached']);
    const text = await daemon.cli('cbtinfo', '--device', 'vol1');
    assert.match(text.stdout, /^device_capacity=3145728$/m);
    assert.match(text.stdout, /^block_count=48$/m);
    const v = await daemon.json<{ version: string }>('version');
    assert.equal(v.version, (JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version, 'the package\'s version');
    await daemon.json('detach', '--device', 'vol1');
    assert.deepEqual((await daemon.json<{ devices: unknown[] }>('list')).devices, []);
  });

  it('errors: one line naming the errno on stderr, non-zero status', async () => {
    let r = await daemon.cli('detach', '--device', 'ghost');
    assert.equal(r.code, 2); // ENOENT
    assert.equal(r.stderr.trim().split('\n').length, 1);
    assert.match(r.stderr, /^blksnap detach: ENOENT: /);
    r = await daemon.cli('attach');
    assert.match(r.stderr, /EINVAL: attach: --device is required/);
    assert.equal(r.code, 22, 'a usage error is EINVAL');
    r = await daemon.cli('attach', '--frob');
    assert.equal(r.code, 22, 'an unknown option is EINVAL');
    r = await daemon.cli('frobnicate');
    assert.equal(r.code, 22, 'an unknown command is EINVAL, as an unknown option is');
    assert.match(r.stderr, /EINVAL: unknown command 'frobnicate'/);
    r = await daemon.cli();
    assert.equal(r.code, 22, 'no command at all');
    // A device in no snapshot has no snapshot to tell of: ESRCH, not empty fields.
    const lone = sparseFile(path.join(tmp.dir, 'lone'), 1024 * 1024);
    await daemon.json('attach', '--device', lone);
    r = await daemon.cli('snapshot_info', '--device', 'lone');
    assert.equal(r.code, 3);
    assert.match(r.stderr, /ESRCH: device lone belongs to no snapshot/);
    await daemon.json('detach', '--device', 'lone');
    r = await run(process.execPath, [blksnapCli, 'list', '--control', path.join(tmp.dir, 'nowhere.sock')]);
    assert.match(r.stderr, /ENOENT: cannot reach blksnapd/);
  });

  it('the daemon exits cleanly on SIGTERM: exports closed, sockets removed', async () => {
    const file = sparseFile(path.join(tmp.dir, 'term'), 1024 * 1024);
    const d = await TestDaemon.start(['--attach', file]);
    const { controlPath, nbdPath } = d;
    assert.equal(fs.statSync(controlPath).mode & 0o777, 0o600);
    assert.equal(fs.statSync(nbdPath).mode & 0o777, 0o600);
    const code = await d.stop();
    assert.equal(code, 0);
    assert.match(d.log, /SIGTERM: shutting down/);
    assert.equal(fs.existsSync(controlPath), false);
    assert.equal(fs.existsSync(nbdPath), false);
  });

  it('--control works before the command as after it', async () => {
    const env = { ...process.env, BLKSNAP_CONTROL: '/nonexistent/control.sock' };
    const before = await run(process.execPath, [blksnapCli, '--control', daemon.controlPath, 'version', '--json'], { env });
    assert.equal(before.code, 0, before.stderr);
    assert.match(JSON.parse(before.stdout).version, /^\d+\.\d+\.\d+$/);
    const eq = await run(process.execPath, [blksnapCli, `--control=${daemon.controlPath}`, 'list'], { env });
    assert.equal(eq.code, 0, eq.stderr);
    const after = await run(process.execPath, [blksnapCli, 'version', '--control', daemon.controlPath], { env });
    assert.equal(after.code, 0, after.stderr);
  });

  it('snapshot_info --json keeps every field with --field', async () => {
    const file = sparseFile(path.join(tmp.dir, 'info'), 3 * 1024 * 1024);
    await daemon.json('attach', '--device', file, '--name', 'info1');
    const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'info1', '--file', tmp.dir, '--limit', '64M');
    try {
      await daemon.json('snapshot_take', '--id', id);
      for (const field of ['image', 'error_code']) {
        const doc = await daemon.json<Record<string, unknown>>('snapshot_info', '--device', 'info1', '--field', field);
        assert.equal(doc.errorCode, 0, `--field ${field}`);
        assert.match((doc.image as { uri: string }).uri, /info1-image/, `--field ${field}`);
      }
      const text = await daemon.cli('snapshot_info', '--device', 'info1', '--field', 'error_code');
      assert.equal(text.stdout.trim(), '0');
    } finally {
      await daemon.json('snapshot_destroy', '--id', id);
      await daemon.json('detach', '--device', 'info1');
    }
  });

  it('a second daemon on the same state directory is refused', async () => {
    const r = await run(process.execPath, [blksnapd, '--state-dir', daemon.dir, '--control', path.join(tmp.dir, 'c2'), '--nbd', path.join(tmp.dir, 'n2')], { timeoutMs: 10_000 });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /EBUSY: another blksnapd/);
    assert.ok(daemon.isAlive);
  });
});

describe('blksnapd socket ownership', () => {
  it('refuses a --control or --nbd path that is not a socket, and leaves the file alone', async () => {
    const { dir, remove } = tempDir();
    try {
      for (const which of ['--control', '--nbd']) {
        const victim = path.join(dir, `precious-${which.slice(2)}`);
        fs.writeFileSync(victim, 'keep me');
        const args = ['--state-dir', path.join(dir, `state-${which.slice(2)}`), '--control', path.join(dir, 'c'), '--nbd', path.join(dir, 'n'), which, victim];
        const r = await run(process.execPath, [blksnapd, ...args], { timeoutMs: 10_000 });
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /EEXIST: .*precious.* is not a socket/);
        assert.equal(fs.readFileSync(victim, 'utf8'), 'keep me');
      }
    } finally {
      remove();
    }
  });

  it('never takes over the sockets of a running daemon', async () => {
    const first = await TestDaemon.start();
    const { dir, remove } = tempDir();
    try {
      const r = await run(process.execPath, [blksnapd, '--state-dir', dir, '--control', first.controlPath, '--nbd', path.join(dir, 'n')], { timeoutMs: 10_000 });
      assert.equal(r.code, 1);
      assert.match(r.stderr, /EBUSY: another process is listening on/);
      assert.ok(first.isAlive);
      assert.equal((await first.cli('list')).code, 0);
    } finally {
      await first.stop();
      remove();
    }
  });
});

describe('durability', () => {
  it('acknowledged FUA and flushed writes are in the backing file after the daemon is killed (SIGKILL)', async () => {
    const { dir, remove } = tempDir();
    try {
      const file = sparseFile(path.join(dir, 'durable'), 4 * 1024 * 1024);
      const daemon = await TestDaemon.start(['--attach', file]);
      const { NbdClient } = await import('../helpers/nbd-client.js');
      const c = await NbdClient.connect(daemon.nbdPath, 'durable');
      await c.pwrite(0, Buffer.alloc(65536, 0x11), true);
      await c.pwrite(65536, Buffer.alloc(65536, 0x22));
      await c.flush();
      daemon.child.kill('SIGKILL');
      await new Promise((r) => daemon.child.once('exit', r));
      c.close();
      const bytes = fs.readFileSync(file);
      assert.ok(bytes.subarray(0, 65536).every((b) => b === 0x11));
      assert.ok(bytes.subarray(65536, 131072).every((b) => b === 0x22));
      await daemon.stop();
    } finally {
      remove();
    }
  });
});
