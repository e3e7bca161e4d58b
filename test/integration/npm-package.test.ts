// The npm package: `npm pack` gives a tarball that `npm install -g` turns into working blksnapd and
// blksnap commands and an importable library with its types (issue 14, first part).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { repoRoot } from '../helpers/daemon.js';
import { check, missing, sparseFile, tempDir } from '../helpers/tools.js';

describe('npm package', { skip: missing('npm', 'qemu-io') }, () => {
  it('packs, installs into a prefix, and the daemon, the tool and the library work from there', async () => {
    const { dir, remove } = tempDir('blksnap-pack-');
    const prefix = path.join(dir, 'prefix');
    const state = path.join(dir, 'state');
    // The build is there already (npm test builds first); prepack would rebuild it under the running suite.
    await check('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], { env: { ...process.env, npm_config_loglevel: 'error' }, timeoutMs: 120_000, cwd: repoRoot });
    const tarball = fs.readdirSync(dir).find((f) => f.endsWith('.tgz'));
    assert.ok(tarball, 'npm pack made a tarball');
    const listing = await check('tar', ['tzf', path.join(dir, tarball)]);
    assert.match(listing, /package\/dist\/src\/daemon\/main\.js/);
    assert.match(listing, /package\/dist\/src\/index\.d\.ts/);
    assert.match(listing, /package\/dist\/share\/man\/man8\/blksnapd\.8/, 'the man pages');
    assert.match(listing, /package\/dist\/share\/bash-completion\/completions\/blksnap/, 'the bash completion');
    assert.doesNotMatch(listing, /package\/(test|bench|src)\//, 'only the build, the commands and the README');
    await check('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', path.join(dir, tarball)], { timeoutMs: 180_000 });
    const bin = (name: string): string => path.join(prefix, 'bin', name);
    const env = { ...process.env, BLKSNAP_CONTROL: path.join(state, 'control.sock') };
    const daemon = spawn(bin('blksnapd'), ['--control', env.BLKSNAP_CONTROL, '--nbd', path.join(state, 'nbd.sock'), '--state-dir', state], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    daemon.stderr.on('data', (d) => (log += d));
    try {
      for (let i = 0; i < 500 && !log.includes('ready:'); i++) await new Promise((r) => setTimeout(r, 20));
      assert.match(log, /ready:/);
      const disk = sparseFile(path.join(dir, 'disk.img'), 16 << 20);
      const attached = JSON.parse(await check(bin('blksnap'), ['attach', '--device', disk, '--json'], { env })) as { uri: string };
      await check('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 1M', attached.uri]);
      const info = JSON.parse(await check(bin('blksnap'), ['cbtinfo', '--device', 'disk.img', '--json'], { env })) as { blockCount: number };
      assert.equal(info.blockCount, 256);
      const id = (await check(bin('blksnap'), ['snapshot_create', '--device', 'disk.img', '--file', dir, '--limit', '64M'], { env })).trim();
      await check(bin('blksnap'), ['snapshot_take', '--id', id], { env });
      await check(bin('blksnap'), ['snapshot_destroy', '--id', id], { env });
      await check(bin('blksnap'), ['detach', '--device', 'disk.img'], { env });
      // The library, by its package name, from the installed package (its exports and types).
      const installed = path.join(prefix, 'lib', 'node_modules', 'blksnap');
      const kinds = await check(process.execPath, ['--input-type=module', '-e', "import { Service, Cbt, Session } from 'blksnap'; console.log([Service, Cbt, Session].map((x) => typeof x).join(' '))"], { env: { ...process.env, NODE_NO_WARNINGS: '1' }, cwd: installed });
      assert.equal(kinds.trim(), 'function function function');
      assert.ok(fs.existsSync(path.join(installed, 'dist/src/index.d.ts')));
    } finally {
      const exited = new Promise((r) => daemon.once('exit', r));
      daemon.kill('SIGTERM');
      await exited;
      remove();
    }
  });
});
