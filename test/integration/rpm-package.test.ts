// The RPM package, as blksnap ships one: built with rpmbuild (Debian's rpm) by scripts/package-rpm.sh
// and signed with a key made for the test; rpmlint finds no error; it holds what the Debian package
// holds (program, units and timer generator, config, hooks, man pages, completion, the installed
// tests), keeps the config over upgrades, and its scriptlets enable the unit where systemd runs.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { repoRoot } from '../helpers/daemon.js';
import { check, missing, run, tempDir } from '../helpers/tools.js';

describe('RPM package', { skip: missing('rpmbuild', 'rpm', 'rpmlint', 'gpg', 'dpkg-deb') }, () => {
  it('builds and is signed, rpmlint finds no error, and it holds what the .deb holds', { timeout: 300_000 }, async () => {
    const { dir, remove } = tempDir('blksnap-rpm-');
    try {
      // A throw-away signing key, and an rpm database of this test's own that trusts it.
      const gnupg = path.join(dir, 'gnupg');
      fs.mkdirSync(gnupg, { mode: 0o700 });
      const home = path.join(dir, 'home');
      fs.mkdirSync(path.join(home, 'rpmdb'), { recursive: true });
      const env = { ...process.env, GNUPGHOME: gnupg, HOME: home };
      await check('gpg', ['--batch', '--passphrase', '', '--quick-gen-key', 'blksnap test <test@example.invalid>', 'rsa2048', 'sign', 'never'], { env });
      fs.writeFileSync(path.join(home, 'key.asc'), await check('gpg', ['--armor', '--export', 'blksnap test'], { env }));
      fs.writeFileSync(path.join(home, '.rpmmacros'), `%_dbpath ${path.join(home, 'rpmdb')}\n`);
      await check('rpm', ['--initdb'], { env });
      await check('rpm', ['--import', path.join(home, 'key.asc')], { env });

      const out = path.join(dir, 'out');
      const rpm = (await check('sh', [path.join(repoRoot, 'scripts/package-rpm.sh'), out], { cwd: repoRoot, env: { ...env, BLKSNAP_RPM_GPG_NAME: 'blksnap test' }, timeoutMs: 180_000 })).trim();
      assert.match(path.basename(rpm), /^blksnap-\d+\.\d+\.\d+-1\.x86_64\.rpm$/);
      assert.match(await check('rpm', ['-K', rpm], { env }), /digests signatures OK/);
      const lint = await run('rpmlint', [rpm], { env, timeoutMs: 120_000 });
      assert.match(lint.stdout, / 0 errors, /, lint.stdout);

      const listed = (await check('rpm', ['-qlp', rpm], { env })).trim().split('\n');
      for (const f of ['/usr/bin/blksnapd', '/usr/bin/blksnap', '/usr/bin/blksnap-tests', '/usr/lib/blksnap/tests/all.sh', '/usr/lib/systemd/system/blksnapd.service', '/usr/lib/systemd/system/blksnap-job@.service', '/usr/lib/systemd/system/blksnap-job@.timer', '/usr/lib/systemd/system-generators/blksnap-job-generator', '/etc/blksnap/blksnapd.conf', '/etc/blksnap/hooks.d', '/etc/blksnap/jobs', '/usr/share/blksnap/hooks/postgresql', '/usr/share/blksnap/hooks/mysql', '/usr/share/man/man8/blksnap.8.gz', '/usr/share/man/man8/blksnapd.8.gz', '/usr/share/bash-completion/completions/blksnap']) {
        assert.ok(listed.includes(f), `${f} in the RPM`);
      }
      assert.deepEqual((await check('rpm', ['-qp', '--configfiles', rpm], { env })).trim().split('\n'), ['/etc/blksnap/blksnapd.conf']);
      assert.match(await check('rpm', ['-qp', '--requires', rpm], { env }), /nodejs >= 20/);
      assert.match(await check('rpm', ['-qp', '--scripts', rpm], { env }), /systemctl enable blksnapd\.service/);

      // The same contents as the Debian package, but for each format's own documents.
      const deb = (await check('sh', [path.join(repoRoot, 'scripts/package-deb.sh'), out], { cwd: repoRoot, timeoutMs: 180_000 })).trim();
      const inDeb = (await check('dpkg-deb', ['--contents', deb])).trim().split('\n').map((l) => (l.split(/\s+/).slice(5).join(' ').replace(/^\./, '').replace(/\/$/, '').split(' -> ')[0] as string));
      const ownDocs = (f: string): boolean => /^\/usr\/share\/(doc|licenses)(\/|$)/.test(f);
      const files = (list: string[]): string[] => list.filter((f) => f.startsWith('/usr/lib/blksnap/') || f.startsWith('/usr/bin/') || f.startsWith('/etc/') || f.startsWith('/usr/share/') || f.startsWith('/usr/lib/systemd/')).filter((f) => !ownDocs(f));
      const debFiles = new Set(files(inDeb));
      const rpmFiles = new Set(files(listed));
      assert.deepEqual([...rpmFiles].filter((f) => !debFiles.has(f)), [], 'nothing only in the RPM');
      assert.deepEqual([...debFiles].filter((f) => !rpmFiles.has(f) && !['/usr/share', '/usr/lib/systemd', '/usr/lib/systemd/system', '/usr/share/man', '/usr/share/man/man8', '/usr/share/bash-completion', '/usr/share/bash-completion/completions', '/usr/lib/systemd/system-generators'].includes(f)), [], 'nothing only in the .deb');
    } finally {
      remove();
    }
  });
});
