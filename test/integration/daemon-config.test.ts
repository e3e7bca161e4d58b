// A daemon configured by a file (--config): its devices attached, its log as JSON lines, --verbose
// telling each connection's life; a bad config file stops the start with the file and line.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { blksnapd, TestDaemon } from '../helpers/daemon.js';
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
});
