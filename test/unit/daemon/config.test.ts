// The daemon's configuration: a config file holds exactly the command line's options (one per line),
// the command line wins, bad lines are named by file and line; the log as text or JSON.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { configFileArgs, DAEMON_HELP, daemonOptionNames, parseDaemonArgs, withConfigFile } from '../../../src/daemon/config.js';
import { createLog } from '../../../src/daemon/log.js';
import { tempDir } from '../../helpers/tools.js';

describe('daemon configuration', () => {
  it('a config file gives the options of the command line, which wins; bad lines name file and line', () => {
    const { dir, remove } = tempDir('blksnapd-config-');
    try {
      const file = path.join(dir, 'blksnapd.conf');
      fs.writeFileSync(file, ['# blksnapd', 'state-dir = /var/lib/blksnap', 'attach = /srv/a.img=a', 'attach = /srv/b.img  # the second disk', 'loop', 'max-connections = 8', 'log-format = json', ''].join('\n'));
      const config = parseDaemonArgs(withConfigFile(['--config', file, '--max-connections', '16', '--attach', '/srv/c.img'], '/nonexistent'));
      assert.ok(config);
      assert.equal(config.stateDir, '/var/lib/blksnap');
      assert.deepEqual(config.attach, [{ path: '/srv/a.img', name: 'a' }, { path: '/srv/b.img' }, { path: '/srv/c.img' }]);
      assert.equal(config.loopAll, true);
      assert.equal(config.maximumConnections, 16, 'the command line wins');
      assert.equal(config.logFormat, 'json');

      // The default file is read when it exists and no --config is given.
      assert.equal(parseDaemonArgs(withConfigFile([], file))?.maximumConnections, 8);
      assert.equal(parseDaemonArgs(withConfigFile([], path.join(dir, 'none')))?.maximumConnections, 256);

      assert.throws(() => configFileArgs('loop\nstate-dri = /x\n', file), new RegExp(`${file}:2: unknown option 'state-dri'`));
      assert.throws(() => configFileArgs('= 3\n', file), /:1: expected "option = value"/);
      assert.throws(() => configFileArgs('config = /etc/other\n', file), /unknown option 'config'/);
      assert.throws(() => withConfigFile(['--config', path.join(dir, 'missing.conf')]), /cannot read config file .*ENOENT/);
      assert.throws(() => parseDaemonArgs(withConfigFile(['--config', file, '--log-format', 'xml'], '/nonexistent')), /--log-format takes text or json/);
      assert.equal(parseDaemonArgs(['--busy-poll-us', '0'])?.busyPollMicroseconds, 0);
      assert.equal(parseDaemonArgs([])?.busyPollMicroseconds, 50);
      assert.throws(() => parseDaemonArgs(['--busy-poll-us', '5000']), /--busy-poll-us takes microseconds from 0 to 1000, not '5000'/);
      assert.equal(parseDaemonArgs([])?.fuseIoUring, true);
      assert.equal(parseDaemonArgs(['--fuse-io-uring', 'off'])?.fuseIoUring, false);
      assert.equal(parseDaemonArgs(withConfigFile(['--config', file, '--fuse-io-uring', 'on'], '/nonexistent'))?.fuseIoUring, true);
      assert.throws(() => parseDaemonArgs(['--fuse-io-uring', 'yes']), /--fuse-io-uring/);
      assert.equal(parseDaemonArgs([])?.cowCopy, 'direct');
      assert.equal(parseDaemonArgs(['--cow-copy', 'cached'])?.cowCopy, 'cached');
      assert.equal(parseDaemonArgs([])?.exitWithParent, false);
      assert.equal(parseDaemonArgs(['--exit-with-parent'])?.exitWithParent, true);
      assert.throws(() => parseDaemonArgs(['--cow-copy', 'buffered']), /--cow-copy/);
    } finally {
      remove();
    }
  });

  it('every option --help lists is one a config file takes, and --help lists them all', () => {
    const names = daemonOptionNames();
    for (const n of ['control', 'nbd', 'listen', 'state-dir', 'attach', 'loop', 'cbt-region', 'cbt-sync-interval', 'config', 'log-format', 'verbose', 'busy-poll-us', 'fuse-io-uring', 'cow-copy']) assert.ok(names.includes(n), n);
    assert.match(DAEMON_HELP, /--verbose/);
  });

  it('logs one line per event: timestamped text, or one JSON object with time, program and message', () => {
    let out = '';
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        out += chunk.toString();
        done();
      },
    });
    createLog('json', stream)('attached /srv/a.img as a');
    const doc = JSON.parse(out.trim()) as { time: string; program: string; message: string };
    assert.equal(doc.program, 'blksnapd');
    assert.equal(doc.message, 'attached /srv/a.img as a');
    assert.ok(!Number.isNaN(Date.parse(doc.time)));
    out = '';
    createLog('text', stream)('ready');
    assert.match(out, /^\d{4}-\d\d-\d\dT[\d:.]+Z blksnapd: ready\n$/);
  });
});
