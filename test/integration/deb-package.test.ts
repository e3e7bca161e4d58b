// The Debian package: built with dpkg-deb, lintian without errors, installed on this machine, the
// service started (systemd where it runs, else the unit's ExecStart by hand), used with the tool's
// defaults, a job run as its unit runs it, blksnap-tests (the scenario suite) run from the installed
// package, then purged leaving nothing behind.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { repoRoot } from '../helpers/daemon.js';
import { check, missing, run, sparseFile, tempDir } from '../helpers/tools.js';

const hasSystemd = fs.existsSync('/run/systemd/system');
const installed = (): Promise<boolean> => run('dpkg-query', ['-s', 'blksnap']).then((r) => r.stdout.includes('Status: install ok installed'));

describe('Debian package', { skip: missing('dpkg-deb', 'dpkg', 'lintian', 'qemu-io', 'man') }, () => {
  it('builds, passes lintian, installs, runs as the service, and purges to nothing', { timeout: 300_000 }, async (t) => {
    const { dir, remove } = tempDir('blksnap-deb-');
    let daemon: ReturnType<typeof spawn> | null = null;
    try {
      if (await installed()) return t.skip('a blksnap package is installed on this machine already');
      const deb = (await check('sh', [path.join(repoRoot, 'scripts/package-deb.sh'), dir], { cwd: repoRoot, timeoutMs: 120_000 })).trim();
      assert.match(path.basename(deb), /^blksnap_\d+\.\d+\.\d+_amd64\.deb$/);
      // lintian leaves its mldbm-* temporary files behind: in a folder of this test's, removed after.
      const lintianTmp = path.join(dir, 'lintian-tmp');
      fs.mkdirSync(lintianTmp);
      const lint = await run('lintian', [deb], { timeoutMs: 240_000, env: { ...process.env, TMPDIR: lintianTmp } });
      assert.deepEqual(lint.stdout.split('\n').filter((l) => l.startsWith('E:')), [], lint.stdout);

      await check('dpkg', ['-i', deb], { timeoutMs: 120_000 });
      for (const f of ['/usr/bin/blksnapd', '/usr/bin/blksnap', '/usr/bin/blksnap-tests', '/usr/lib/systemd/system/blksnapd.service', '/etc/blksnap/blksnapd.conf', '/usr/share/bash-completion/completions/blksnap']) assert.ok(fs.existsSync(f), f);
      assert.match(await check('man', ['-w', 'blksnap']), /\/usr\/share\/man\/man8\/blksnap\.8\.gz/);
      if (hasSystemd) {
        await check('systemctl', ['start', 'blksnapd']);
      } else {
        // No systemd here: what the unit would do, by hand.
        const unit = fs.readFileSync('/usr/lib/systemd/system/blksnapd.service', 'utf8');
        const exec = (/^ExecStart=(.*)$/m.exec(unit)?.[1] ?? '').split(' ');
        for (const d of ['/run/blksnap', '/var/lib/blksnap']) fs.mkdirSync(d, { recursive: true, mode: 0o700 });
        daemon = spawn(exec[0] as string, exec.slice(1), { stdio: 'ignore' });
      }
      // The tool with no options reaches the service.
      let list = await run('blksnap', ['list']);
      for (let i = 0; i < 100 && list.code !== 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
        list = await run('blksnap', ['list']);
      }
      assert.equal(list.code, 0, list.stderr);
      const disk = sparseFile(path.join(dir, 'svc.img'), 16 * 1024 * 1024);
      const attached = JSON.parse(await check('blksnap', ['attach', '--device', disk, '--json'])) as { name: string; uri: string };
      await check('qemu-io', ['-f', 'raw', '-c', 'write 0 1M', attached.uri]);
      assert.match(await check('blksnap', ['cbtinfo', '--device', attached.name]), /changes_number=0/);
      // A job, run as its timer's unit runs it (by the unit's command where systemd does not run).
      for (const f of ['/usr/lib/systemd/system/blksnap-job@.service', '/usr/lib/systemd/system/blksnap-job@.timer', '/usr/lib/systemd/system-generators/blksnap-job-generator', '/usr/share/blksnap/hooks/postgresql', '/usr/share/blksnap/hooks/mysql']) assert.ok(fs.existsSync(f), f);
      const repoDir = path.join(dir, 'svc-repo');
      await check('blksnap', ['backup_init', '--repo', repoDir, '--encryption', 'none']);
      fs.writeFileSync('/etc/blksnap/jobs/svc.conf', `repo = ${repoDir}\ndevices = ${attached.name}\nschedule = hourly\nkeep-last = 3\nverify = 1/2\n`);
      const jobUnit = fs.readFileSync('/usr/lib/systemd/system/blksnap-job@.service', 'utf8');
      const jobExec = (/^ExecStart=(.*)$/m.exec(jobUnit)?.[1] ?? '').replace(/%i/g, 'svc').split(' ');
      const ran = await run(jobExec[0] as string, jobExec.slice(1), { timeoutMs: 120_000 });
      assert.equal(ran.code, 0, ran.stderr);
      assert.match(ran.stdout, /job svc: ok/);
      const generated = path.join(dir, 'generated');
      await check('/usr/lib/systemd/system-generators/blksnap-job-generator', [generated]);
      assert.match(fs.readFileSync(path.join(generated, 'blksnap-job@svc.timer.d', '50-schedule.conf'), 'utf8'), /OnCalendar=hourly/);
      fs.rmSync('/etc/blksnap/jobs/svc.conf');
      await check('blksnap', ['detach', '--device', attached.name]);
      // blksnap's tests from the installed package: the scenario suite against the installed program.
      // Without this test runner's own context, the suite reports as a run of its own (TAP on stdout).
      const { NODE_TEST_CONTEXT: _context, ...env } = process.env;
      const suite = await run('blksnap-tests', [], { timeoutMs: 240_000, env });
      assert.equal(suite.code, 0, suite.stdout.slice(-3000));
      assert.match(suite.stdout, /# pass [1-9]\d*\n# fail 0/);
    } finally {
      if (hasSystemd) await run('systemctl', ['stop', 'blksnapd']);
      else if (daemon && daemon.exitCode === null) {
        const child = daemon;
        await new Promise((r) => {
          child.once('exit', r);
          child.kill('SIGTERM');
        });
      }
      if (await installed()) await check('dpkg', ['--purge', 'blksnap'], { timeoutMs: 120_000 });
      remove();
    }
    for (const f of ['/usr/lib/blksnap', '/usr/bin/blksnapd', '/usr/bin/blksnap', '/usr/bin/blksnap-tests', '/etc/blksnap', '/var/lib/blksnap', '/usr/lib/systemd/system/blksnapd.service']) assert.ok(!fs.existsSync(f), `${f} is gone after purge`);
    assert.equal(await installed(), false);
  });
});
