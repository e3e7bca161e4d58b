// A daemon configured by a file (--config): its devices attached, its log as JSON lines, --verbose
// telling each connection's life; a bad config file stops the start with the file and line.
// --exit-with-parent: a daemon whose starter is killed -9 shuts down and leaves nothing behind.
// A log nobody reads any more (stderr a pipe whose reader is gone) stops nothing.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { blksnapCli, blksnapd, TestDaemon } from '../helpers/daemon.js';
import { check, missing, run, sparseFile, tempDir } from '../helpers/tools.js';

describe('daemon configuration file and logs', { skip: missing('qemu-io') }, () => {
  it('--config attaches its devices and logs JSON lines with each connection', async () => {
    const { dir, remove } = tempDir('blksnapd-conf-');
    const disk = sparseFile(path.join(dir, 'conf.img'), 8 * 1024 * 1024);
    const conf = path.join(dir, 'blksnapd.conf');
    fs.writeFileSync(conf, `# test\nattach = ${disk}=confdisk\nlog-format = json\nverbose\n`);
    const daemon = await TestDaemon.startIn(dir, remove, ['--config', conf]);
    try {
      await check('qemu-io', ['-f', 'raw', '-c', 'write 0 64k', daemon.uri('confdisk')]);
      await daemon.json('list');
      await new Promise((r) => setTimeout(r, 100));
      const lines = daemon.log.trim().split('\n').map((l) => JSON.parse(l) as { time: string; program: string; message: string });
      assert.ok(lines.every((l) => l.program === 'blksnapd' && !Number.isNaN(Date.parse(l.time))));
      const messages = lines.map((l) => l.message);
      assert.ok(messages.some((m) => /attached .*conf\.img as confdisk/.test(m)), messages.join('\n'));
      assert.ok(messages.some((m) => /^nbd connection \d+ opened \(unix socket\)$/.test(m)));
      assert.ok(messages.some((m) => /^nbd connection \d+ closed$/.test(m)));
      assert.ok(messages.some((m) => /^control connection \d+ opened$/.test(m)));
    } finally {
      await daemon.stop();
    }

    const { dir: bad, remove: removeBad } = tempDir('blksnapd-conf-');
    try {
      fs.writeFileSync(path.join(bad, 'bad.conf'), 'loop\nmax-conections = 3\n');
      const r = await run(process.execPath, [blksnapd, '--config', path.join(bad, 'bad.conf'), '--state-dir', bad, '--control', path.join(bad, 'c.sock'), '--nbd', path.join(bad, 'n.sock')]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /bad\.conf:2: unknown option 'max-conections'/);
    } finally {
      removeBad();
    }
  });

  it('--exit-with-parent: when the process that started it is killed -9, the daemon shuts down, its loop device and FUSE mount gone', async () => {
    const { dir, remove } = tempDir('blksnapd-parent-');
    const disk = sparseFile(path.join(dir, 'disk.img'), 8 * 1024 * 1024);
    const control = path.join(dir, 'c.sock');
    // The starter: spawns the daemon, prints its pid, and waits to be killed.
    const starter = spawn(process.execPath, ['-e', `
      const { spawn } = require('node:child_process');
      const d = spawn(process.execPath, ${JSON.stringify([blksnapd, '--exit-with-parent', '--loop', '--attach', `${disk}=disk`, '--control', control, '--nbd', path.join(dir, 'n.sock'), '--state-dir', dir])}, { stdio: 'ignore' });
      console.log(d.pid);
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'ignore'] });
    let daemonPid = 0;
    try {
      daemonPid = Number(await new Promise<string>((resolve) => starter.stdout.once('data', (d: Buffer) => resolve(d.toString()))));
      assert.ok(daemonPid > 0);
      let blockDevice = '';
      for (let i = 0; i < 200 && !blockDevice; i++) {
        const r = await run(process.execPath, [blksnapCli, 'list', '--json', '--control', control]);
        if (r.code === 0) blockDevice = (JSON.parse(r.stdout) as { devices: Array<{ blockDevice?: string }> }).devices[0]?.blockDevice ?? '';
        if (!blockDevice) await new Promise((r) => setTimeout(r, 50));
      }
      assert.match(blockDevice, /^\/dev\/loop\d+$/, 'the daemon gave the device a loop device');
      const mounts = (): string => fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(dir)).join('\n');
      assert.notEqual(mounts(), '', 'its FUSE file is mounted');
      starter.kill('SIGKILL');
      let isGone = false;
      for (let i = 0; i < 200 && !isGone; i++) {
        isGone = !fs.existsSync(`/proc/${daemonPid}`);
        if (!isGone) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(isGone, 'the daemon exited within 10 s of its parent');
      assert.equal(mounts(), '', 'no FUSE mount is left');
      const loops = await check('losetup', ['-a']);
      assert.ok(!loops.includes(dir), `no loop device is left: ${loops}`);
      assert.ok(!fs.existsSync(control), 'its control socket is removed');
    } finally {
      starter.kill('SIGKILL');
      // A daemon still there (the test failed) is stopped cleanly, so its mount and loop device go too.
      if (daemonPid > 0 && fs.existsSync(`/proc/${daemonPid}`)) {
        process.kill(daemonPid, 'SIGTERM');
        for (let i = 0; i < 200 && fs.existsSync(`/proc/${daemonPid}`); i++) await new Promise((r) => setTimeout(r, 50));
      }
      remove();
    }
  });

  it('a log nobody reads any more (stderr a pipe whose reader closed it: EPIPE) stops nothing: requests are answered and the daemon stays idle', async () => {
    const { dir, remove } = tempDir('blksnapd-epipe-');
    const control = path.join(dir, 'c.sock');
    const daemon = spawn(process.execPath, [blksnapd, '--exit-with-parent', '--control', control, '--nbd', path.join(dir, 'n.sock'), '--state-dir', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      await new Promise<void>((resolve) => daemon.stderr.on('data', (d: Buffer) => d.toString().includes('ready:') && resolve()));
      daemon.stderr.destroy(); // the reader goes: the daemon's next log line meets EPIPE
      const cpuSeconds = (): number => {
        const fields = fs.readFileSync(`/proc/${daemon.pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
        return (Number(fields[11]) + Number(fields[12])) / 100;
      };
      // Each attach and detach logs a line.
      for (let i = 0; i < 3; i++) {
        const disk = sparseFile(path.join(dir, `d${i}.img`), 1024 * 1024);
        const attached = await run(process.execPath, [blksnapCli, 'attach', '--device', disk, '--name', `d${i}`, '--control', control], { timeoutMs: 10_000 });
        assert.equal(attached.code, 0, `attach answered: ${attached.stderr}`);
        const detached = await run(process.execPath, [blksnapCli, 'detach', '--device', `d${i}`, '--control', control], { timeoutMs: 10_000 });
        assert.equal(detached.code, 0, `detach answered: ${detached.stderr}`);
      }
      const before = cpuSeconds();
      await new Promise((r) => setTimeout(r, 1000));
      const used = cpuSeconds() - before;
      assert.ok(used < 0.5, `the daemon used ${used.toFixed(2)} CPU-s in 1 s while idle`);
    } finally {
      daemon.kill('SIGTERM');
      for (let i = 0; i < 200 && daemon.exitCode === null && daemon.signalCode === null; i++) await new Promise((r) => setTimeout(r, 50));
      if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
      remove();
    }
  });

  it('one daemon per state directory: a second start is refused while the first runs; a pid file of a process gone is replaced', async () => {
    const { dir, remove } = tempDir('blksnapd-pid-');
    const first = await TestDaemon.startIn(dir, () => undefined);
    try {
      const second = await run(process.execPath, [blksnapd, '--state-dir', dir, '--control', path.join(dir, 'c2.sock'), '--nbd', path.join(dir, 'n2.sock')], { timeoutMs: 15_000 });
      assert.notEqual(second.code, 0);
      assert.match(second.stderr, new RegExp(`EBUSY: another blksnapd \\(pid ${first.child.pid}\\) uses state directory`));
    } finally {
      await first.kill();
    }
    // The first died by SIGKILL: its pid file names a process that is gone.
    const gone = first.child.pid as number;
    assert.equal(fs.readFileSync(path.join(dir, 'blksnapd.pid'), 'utf8').trim(), String(gone));
    const next = await TestDaemon.startIn(dir, remove);
    try {
      assert.match(next.log, new RegExp(`removing stale pid file of pid ${gone}`));
      assert.equal(fs.readFileSync(path.join(dir, 'blksnapd.pid'), 'utf8').trim(), String(next.child.pid));
    } finally {
      await next.stop();
    }
  });
});
