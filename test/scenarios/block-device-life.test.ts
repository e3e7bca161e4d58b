// Kernel block devices are released by detach, SIGTERM, and — after a crash — by the next daemon's start.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { blksnapCli, blksnapd, TestDaemon } from '../helpers/daemon.js';
import { check, missing, run, sparseFile, tempDir } from '../helpers/tools.js';
import { spawn } from 'node:child_process';

const skip = missing('nbdfuse', 'losetup', 'fusermount3');

function loopsUnder(dir: string): string[] {
  return fs.readdirSync('/sys/block').filter((n) => {
    try {
      return fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').startsWith(dir);
    } catch {
      return false;
    }
  });
}

const fuseMountsUnder = (dir: string) => fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes(` ${dir}`) && l.includes('fuse'));
/** Running, not a zombie waiting for init to reap it. */
const isAlive = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

for (const route of ['fuse', 'nbdfuse']) describe(`kernel block device life (--loop-via ${route})`, { skip }, () => {
  it('SIGTERM releases loop devices, FUSE mounts and nbdfuse', async () => {
    const tmp = tempDir();
    try {
      const daemon = await TestDaemon.start(['--loop-via', route, '--loop', '--attach', sparseFile(path.join(tmp.dir, 'd'), 16 << 20)]);
      const info = await daemon.json<{ devices: Array<{ blockDevice: string }> }>('list');
      assert.match(info.devices[0]?.blockDevice ?? '', /^\/dev\/loop/);
      assert.equal(loopsUnder(daemon.dir).length, 1);
      const records = JSON.parse(fs.readFileSync(path.join(daemon.dir, 'block-devices.json'), 'utf8')) as Array<{ pid: number }>;
      const stateDir = daemon.dir;
      assert.equal(await daemon.stop(), 0);
      assert.deepEqual(loopsUnder(stateDir), []);
      assert.deepEqual(fuseMountsUnder(stateDir), []);
      assert.equal(isAlive(records[0]?.pid as number), false);
    } finally {
      tmp.remove();
    }
  });

  it('what a crashed daemon left is cleaned at the next start', async () => {
    const tmp = tempDir();
    const stateDir = path.join(tmp.dir, 'state');
    const args = [blksnapd, '--state-dir', stateDir, '--control', path.join(stateDir, 'c.sock'), '--nbd', path.join(stateDir, 'n.sock'), '--loop-via', route, '--loop', '--attach', sparseFile(path.join(tmp.dir, 'd'), 16 << 20)];
    let pids: number[] = [];
    let second: TestDaemon | undefined;
    try {
      const first = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      let log = '';
      first.stderr.on('data', (d) => (log += d));
      for (let i = 0; i < 500 && !log.includes('ready:'); i++) await new Promise((r) => setTimeout(r, 20));
      assert.match(log, /is block device \/dev\/loop/);
      pids = (JSON.parse(fs.readFileSync(path.join(stateDir, 'block-devices.json'), 'utf8')) as Array<{ pid: number }>).map((r) => r.pid);
      first.kill('SIGKILL');
      await new Promise((r) => first.once('exit', r));
      assert.equal(loopsUnder(stateDir).length, 1, 'the crash left a loop device behind');
      second = await TestDaemon.start(['--state-dir', stateDir, '--control', path.join(stateDir, 'c.sock'), '--nbd', path.join(stateDir, 'n.sock')]);
      assert.match(second.log, /cleaning block device \/dev\/loop\d+ of d left by an earlier daemon/);
      for (const pid of pids) assert.equal(isAlive(pid), false);
      // The device itself comes back from the state directory, with a block device of
      // the new daemon's own: one loop device, released with everything else at a clean stop.
      const listed = await check(process.execPath, [blksnapCli, 'list', '--json', '--control', path.join(stateDir, 'c.sock')]);
      const devices = (JSON.parse(listed) as { devices: Array<{ name: string; blockDevice?: string }> }).devices;
      assert.deepEqual(devices.map((d) => d.name), ['d']);
      assert.match(devices[0]?.blockDevice ?? '', /^\/dev\/loop\d+$/);
      assert.equal(loopsUnder(stateDir).length, 1);
      await second.stop({ keep: true });
      assert.deepEqual(loopsUnder(stateDir), []);
      assert.deepEqual(fuseMountsUnder(stateDir), []);
    } finally {
      await second?.stop();
      for (const l of loopsUnder(stateDir)) await run('losetup', ['-d', `/dev/${l}`]);
      for (const pid of pids) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
      tmp.remove();
    }
  });
});
