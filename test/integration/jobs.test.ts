// Scheduled backups: a job file run by `blksnap job run NAME` does the backup, the retention and a
// share of the verify (the slice turning run by run) with one exit status; its record and its
// node_exporter textfile follow each run; a run finding the previous one running waits or skips
// (never two at once); a failing run says why and counts as failed in the metrics; `job list` shows
// each job's last and next run; the systemd generator gives each job file its timer.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { tryLockAsync } from '../../src/os/libc.js';
import { withDaemon } from '../helpers/backup.js';
import { check, missing, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;

describe('jobs', { skip: missing('qemu-io') }, () => {
  it('job run: backup, retention and a turning verify slice, one exit status, its record and metrics; overlap waits or skips; job list; the timer generator', async () => {
    await withDaemon({ 'j.img': 16 * MiB }, async (daemon, repo, dir) => {
      const jobs = path.join(dir, 'jobs');
      const state = path.join(dir, 'job-state');
      const textfiles = path.join(dir, 'textfiles');
      fs.mkdirSync(jobs);
      fs.mkdirSync(textfiles);
      const writeJob = (name: string, extra: string): void =>
        fs.writeFileSync(path.join(jobs, `${name}.conf`), `# a test job\nrepo = ${repo.location}\ndevices = j.img\nschedule = *-*-* 02:30:00   # nightly\ndiff-storage = ${dir}\nmetrics-textfile = ${textfiles}\n${extra}`);
      writeJob('nightly', 'keep-last = 2\nprune-grace = 0\nverify = 1/2\n');
      type Run = { result: string; backup?: { id: string }; prune?: { removed: string[] }; verify?: { ok: boolean; share: string; packsChecked: number; packsTotal: number } };
      const runJob = (name: string) => daemon.cli('job', 'run', name, '--jobs-dir', jobs, '--state-dir', state, '--json');
      const runs: Run[] = [];
      for (let i = 0; i < 3; i++) {
        await check('qemu-io', ['-f', 'raw', '-c', `write -P ${i + 1} ${i}M 1M`, daemon.uri('j.img')]);
        const r = await runJob('nightly');
        assert.equal(r.code, 0, r.stderr);
        runs.push(JSON.parse(r.stdout) as Run);
      }
      assert.deepEqual(runs.map((r) => [r.result, r.verify?.share, r.verify?.ok]), [['ok', '1/2', true], ['ok', '2/2', true], ['ok', '1/2', true]]);
      assert.deepEqual(runs[2]?.prune?.removed, [runs[0]?.backup?.id], 'keep-last 2: the first goes at the third run');
      assert.deepEqual((await repo.list()).map((b) => b.id), [runs[1]?.backup?.id, runs[2]?.backup?.id]);
      const metrics = fs.readFileSync(path.join(textfiles, 'blksnap-job-nightly.prom'), 'utf8');
      assert.match(metrics, /^blksnap_job_last_run_success\{job="nightly"\} 1$/m);
      assert.match(metrics, /^blksnap_job_last_success_timestamp_seconds\{job="nightly"\} 1\d{9}(\.\d+)?$/m);
      assert.match(metrics, /^blksnap_job_backups\{job="nightly",host="[^"]+",device="j\.img"\} 2$/m);
      assert.match(metrics, /^blksnap_job_repository_bytes\{job="nightly"\} [1-9]\d*$/m);
      assert.match(metrics, /^blksnap_job_last_verify_ok\{job="nightly"\} 1$/m);
      assert.deepEqual(fs.readdirSync(textfiles), ['blksnap-job-nightly.prom'], 'written whole: no temporary left');

      // The previous run still holds the job's lock: with on-overlap skip the run skips; with wait it waits.
      const handle = await fs.promises.open(path.join(state, 'nightly.lock'), 'r+');
      assert.equal(await tryLockAsync(handle.fd, true), true);
      writeJob('nightly', 'keep-last = 2\nprune-grace = 0\non-overlap = skip\n');
      const skipped = await runJob('nightly');
      assert.equal(skipped.code, 0, skipped.stderr);
      assert.equal((JSON.parse(skipped.stdout) as Run).result, 'skipped');
      writeJob('nightly', 'keep-last = 2\nprune-grace = 0\non-overlap = wait\n');
      let waited = false;
      const waiting = runJob('nightly').then((r) => {
        waited = true;
        return r;
      });
      await new Promise((r) => setTimeout(r, 2500));
      assert.equal(waited, false, 'a run waits while the previous one runs');
      await handle.close();
      const after = await waiting;
      assert.equal(after.code, 0, after.stderr);
      assert.match(after.stderr, /still running: waiting for it/);

      // A job that fails: its errno as the exit status, the run recorded as failed, the metric 0.
      writeJob('broken', 'verify = metadata\n');
      fs.writeFileSync(path.join(jobs, 'broken.conf'), fs.readFileSync(path.join(jobs, 'broken.conf'), 'utf8').replace('devices = j.img', 'devices = no-such-device'));
      const failed = await runJob('broken');
      assert.equal(failed.code, 2, failed.stderr);
      assert.match(failed.stderr, /ENOENT/);
      assert.match(fs.readFileSync(path.join(textfiles, 'blksnap-job-broken.prom'), 'utf8'), /^blksnap_job_last_run_success\{job="broken"\} 0$/m);
      fs.writeFileSync(path.join(jobs, 'typo.conf'), `repo = ${repo.location}\ndevices = j.img\nkeep-lats = 3\n`);
      const typo = await runJob('typo');
      assert.equal(typo.code, 22);
      assert.match(typo.stderr, /typo\.conf:3: unknown key 'keep-lats'/);

      const listed = await daemon.cli('job', 'list', '--jobs-dir', jobs, '--state-dir', state, '--json');
      assert.equal(listed.code, 0, listed.stderr);
      const list = (JSON.parse(listed.stdout) as { jobs: Array<{ name: string; last?: { result: string } | null; next?: string | null; error?: string }> }).jobs;
      assert.deepEqual(list.map((j) => j.name), ['broken', 'nightly', 'typo']);
      assert.equal(list.find((j) => j.name === 'nightly')?.last?.result, 'ok');
      assert.equal(list.find((j) => j.name === 'broken')?.last?.result, 'failed');
      assert.match(list.find((j) => j.name === 'typo')?.error ?? '', /unknown key/);
      if (!missing('systemd-analyze')) assert.match(list.find((j) => j.name === 'nightly')?.next ?? '', /02:30:00/);

      // The systemd generator: each job file its timer, with the job's schedule.
      const out = tempDir('blksnap-generator-');
      try {
        const g = spawnSync('sh', [path.resolve('packaging/blksnap-job-generator'), out.dir], { env: { ...process.env, BLKSNAP_JOBS_DIR: jobs }, encoding: 'utf8' });
        assert.equal(g.status, 0, g.stderr);
        assert.match(fs.readFileSync(path.join(out.dir, 'blksnap-job@nightly.timer.d', '50-schedule.conf'), 'utf8'), /^\[Timer\]\nOnCalendar=\*-\*-\* 02:30:00$/m);
        assert.equal(fs.readlinkSync(path.join(out.dir, 'timers.target.wants', 'blksnap-job@nightly.timer')), '/usr/lib/systemd/system/blksnap-job@.timer');
      } finally {
        out.remove();
      }
    });
  });
});
