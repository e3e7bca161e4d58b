// Who may reach the daemon: the control socket checks its peer's credentials (root, the
// daemon's user, --control-group), the daemon refuses runtime and state directories another user
// could write, never follows a symlink planted among its own files, and the CLI refuses a control
// socket another user serves. Other users are played by uid 65534 (nobody) with inline scripts.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { blksnapCli, blksnapd, TestDaemon } from '../helpers/daemon.js';
import { run, tempDir } from '../helpers/tools.js';
import { defaultRuntimeDir } from '../../src/control/paths.js';

const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;

/** Sends one control request as `uid`:`gid` from an inline script (no file of the checkout needs to be readable); the reply line, or the error. */
function askAs(uid: number, gid: number, socketPath: string, method: string): Promise<string> {
  const script = `const s=require('net').createConnection(process.argv[1]);s.setEncoding('utf8');let out='';s.on('data',d=>{out+=d;if(out.includes('\\n')){process.stdout.write(out);process.exit(0)}});s.on('error',e=>{process.stdout.write('ERROR '+e.code);process.exit(0)});s.on('close',()=>{process.stdout.write(out||'CLOSED');process.exit(0)});s.write(JSON.stringify({jsonrpc:'2.0',id:1,method:process.argv[2],params:{}})+'\\n');`;
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', script, socketPath, method], { uid, gid, cwd: '/', timeout: 10_000 }, (_e, stdout) => resolve(String(stdout)));
  });
}

describe('control socket access', { skip: isRoot ? false : 'needs root to play other users' }, () => {
  it('SO_PEERCRED: another user is refused with EACCES even when the socket mode would let it in; state changes are logged with the uid', async () => {
    const daemon = await TestDaemon.start();
    try {
      // Loosen the filesystem's guard, as a careless chmod would: the daemon's own check must hold.
      fs.chmodSync(daemon.dir, 0o711);
      fs.chmodSync(daemon.controlPath, 0o666);
      const reply = await askAs(NOBODY, NOBODY, daemon.controlPath, 'device.list');
      assert.match(reply, /"errno":"EACCES"/, reply);
      assert.match(reply, /uid 65534 .*may not use this control socket/);
      assert.match(daemon.log, /control connection refused: uid 65534/);
      const mine = await daemon.json<{ devices: unknown[] }>('list');
      assert.deepEqual(mine.devices, []);
      const disk = path.join(daemon.dir, 'disk');
      fs.writeFileSync(disk, Buffer.alloc(1 << 20));
      await daemon.json('attach', '--device', disk);
      assert.match(daemon.log, /control: uid 0 \(pid \d+\) asks device\.attach \{"path":/);
      assert.doesNotMatch(daemon.log, /asks device\.list/, 'reads are not logged');
    } finally {
      await daemon.stop();
    }
  });

  it('--control-group: its members get in (socket 0660, directory passable), other users do not', async () => {
    const daemon = await TestDaemon.start(['--control-group', 'nogroup']);
    try {
      const st = fs.statSync(daemon.controlPath);
      assert.equal(st.mode & 0o777, 0o660);
      assert.equal(st.gid, NOBODY);
      const member = await askAs(NOBODY, NOBODY, daemon.controlPath, 'device.list');
      assert.match(member, /"result":\{"devices":\[\]\}/, member);
      const other = await askAs(NOBODY, 100, daemon.controlPath, 'device.list');
      assert.ok(/EACCES/.test(other), `a user outside the group: ${other}`);
    } finally {
      await daemon.stop();
    }
  });
});

describe('runtime and state directories', { skip: isRoot ? false : 'needs root to play other users' }, () => {
  it('without XDG_RUNTIME_DIR a user\'s default is a directory of its own name, not a shared /tmp/blksnap', () => {
    assert.equal(defaultRuntimeDir({}, 0), '/run/blksnap');
    assert.equal(defaultRuntimeDir({}, 1000), path.join(os.tmpdir(), 'blksnap-1000'));
    assert.equal(defaultRuntimeDir({ XDG_RUNTIME_DIR: '/run/user/1000' }, 1000), '/run/user/1000/blksnap');
  });

  it('a state or socket directory another user owns, or one others may write, is refused; a symlink planted as the pid file is never followed', async () => {
    const { dir, remove } = tempDir();
    try {
      const start = (stateDir: string, socketDir = stateDir) =>
        run(process.execPath, [blksnapd, '--state-dir', stateDir, '--control', path.join(socketDir, 'c.sock'), '--nbd', path.join(socketDir, 'n.sock')], { timeoutMs: 15_000 });
      const theirs = path.join(dir, 'theirs');
      fs.mkdirSync(theirs, { mode: 0o700 });
      fs.chownSync(theirs, NOBODY, NOBODY);
      const r1 = await start(theirs);
      assert.equal(r1.code, 1);
      assert.match(r1.stderr, /EACCES: state directory .*theirs belongs to uid 65534/);
      const open = path.join(dir, 'open');
      fs.mkdirSync(open);
      fs.chmodSync(open, 0o777);
      const r2 = await start(path.join(dir, 'state-ok'), open);
      assert.equal(r2.code, 1);
      assert.match(r2.stderr, /EACCES: socket directory .*open is writable by every user/);
      // A symlink where the pid file goes: the daemon stops rather than write through it.
      const state = path.join(dir, 'state');
      fs.mkdirSync(state, { mode: 0o700 });
      const victim = path.join(dir, 'victim');
      fs.writeFileSync(victim, 'precious\n');
      fs.symlinkSync(victim, path.join(state, 'blksnapd.pid'));
      const r3 = await start(state);
      assert.equal(r3.code, 1, r3.stderr);
      assert.match(r3.stderr, /ELOOP/);
      assert.equal(fs.readFileSync(victim, 'utf8'), 'precious\n');
    } finally {
      remove();
    }
  });

  it('the CLI refuses a control socket another user serves', async () => {
    const { dir, remove } = tempDir();
    fs.chmodSync(dir, 0o755);
    const theirs = path.join(dir, 'theirs');
    fs.mkdirSync(theirs);
    fs.chownSync(theirs, NOBODY, NOBODY);
    const socketPath = path.join(theirs, 'control.sock');
    // A fake daemon, run by nobody, that would answer anything.
    const fake = execFile(process.execPath, ['-e', `require('net').createServer(s=>s.on('data',()=>s.write('{"jsonrpc":"2.0","id":1,"result":{"devices":[{"name":"fake"}]}}\\n'))).listen(process.argv[1]);setTimeout(()=>{},60000)`, socketPath], { uid: NOBODY, gid: NOBODY, cwd: '/' });
    try {
      for (let i = 0; i < 100 && !fs.existsSync(socketPath); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(await new Promise((resolve) => net.createConnection(socketPath).once('connect', () => resolve(true)).once('error', () => resolve(false))));
      const r = await run(process.execPath, [blksnapCli, 'list', '--control', socketPath]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /EACCES: .*served by uid 65534/);
      assert.doesNotMatch(r.stdout, /fake/);
    } finally {
      fake.kill('SIGKILL');
      remove();
    }
  });
});
