// The daemon as systemd expects it (Type=notify): READY=1 once its control socket answers, WATCHDOG=1
// fed while WATCHDOG_USEC asks, STOPPING=1 at a clean stop; sent as datagrams to NOTIFY_SOCKET, which
// a small Python receiver (systemd's side) collects here. The unit's hardening: systemd-analyze
// security rates it 5.0 or below (the unit says why each remaining exposure is needed).
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { check, missing, tempDir } from '../helpers/tools.js';

const RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    data = s.recv(4096)
    print(data.decode().replace("\\n", "|"), flush=True)
`;

describe('systemd', () => {
  it('READY=1 once the control socket answers, WATCHDOG=1 as WATCHDOG_USEC asks, STOPPING=1 at the stop', { skip: missing('python3') }, async () => {
    const t = tempDir('blksnap-notify-');
    const socketPath = path.join(t.dir, 'notify.sock');
    let receiver: ChildProcess | null = null;
    const saved = { NOTIFY_SOCKET: process.env.NOTIFY_SOCKET, WATCHDOG_USEC: process.env.WATCHDOG_USEC };
    try {
      receiver = spawn('/usr/bin/python3', ['-c', RECEIVER, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
      const lines: string[] = [];
      receiver.stdout?.on('data', (d: Buffer) => lines.push(...d.toString().trim().split('\n')));
      for (let i = 0; i < 100 && !lines.includes('listening'); i++) await new Promise((r) => setTimeout(r, 50));
      process.env.NOTIFY_SOCKET = socketPath;
      process.env.WATCHDOG_USEC = '2000000';
      const daemon = await TestDaemon.start();
      process.env.NOTIFY_SOCKET = saved.NOTIFY_SOCKET;
      process.env.WATCHDOG_USEC = saved.WATCHDOG_USEC;
      if (saved.NOTIFY_SOCKET === undefined) delete process.env.NOTIFY_SOCKET;
      if (saved.WATCHDOG_USEC === undefined) delete process.env.WATCHDOG_USEC;
      try {
        for (let i = 0; i < 100 && !lines.some((l) => l.startsWith('READY=1')); i++) await new Promise((r) => setTimeout(r, 50));
        assert.match(lines.find((l) => l.startsWith('READY=1')) ?? '', /^READY=1\|STATUS=serving 0 devices$/);
        assert.equal((await daemon.json<{ devices: unknown[] }>('list')).devices.length, 0, 'the control socket answers');
        await new Promise((r) => setTimeout(r, 2600));
        assert.ok(lines.filter((l) => l === 'WATCHDOG=1').length >= 2, `watchdog fed every second: ${lines.join(', ')}`);
      } finally {
        await daemon.stop();
      }
      for (let i = 0; i < 40 && !lines.includes('STOPPING=1'); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(lines.includes('STOPPING=1'), lines.join(', '));
    } finally {
      if (receiver && receiver.exitCode === null) receiver.kill('SIGKILL');
      t.remove();
    }
  });

  it("the unit's hardening: systemd-analyze security rates it 5.0 or below; the job timer catches up missed runs (Persistent)", { skip: missing('systemd-analyze') }, async () => {
    const report = await check('systemd-analyze', ['security', '--offline=true', path.resolve('packaging/blksnapd.service')]);
    const level = Number(/Overall exposure level for blksnapd\.service: (\d+\.\d+)/.exec(report)?.[1]);
    assert.ok(level <= 5.0, `exposure ${level}`);
    for (const unit of ['blksnapd.service', 'blksnap-job@.service', 'blksnap-job@.timer']) {
      const text = fs.readFileSync(path.resolve('packaging', unit), 'utf8');
      assert.match(text, /^\[Unit\]$/m, unit);
    }
    assert.match(fs.readFileSync(path.resolve('packaging/blksnap-job@.timer'), 'utf8'), /^Persistent=true$/m);
  });
});
