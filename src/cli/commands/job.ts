// Owns the job commands of the CLI: job run (a scheduled backup: backup, retention, a share of the
// verify, one exit status) and job list (each job, its schedule, its last run and its next).
import { isJobName, JOBS_DIR, jobNames, readJob } from '../jobs/job-file.js';
import { defaultJobStateDir, exitStatusOf, jobRecord, nextElapse, runJob } from '../jobs/job-run.js';
import type { Command } from '../command.js';
import { value } from '../command.js';
import { BlkError } from '../../errors.js';

const DIRS = {
  'jobs-dir': { kind: 'value', help: `where the job files NAME.conf are (default ${JOBS_DIR})` },
  'state-dir': { kind: 'value', help: 'where runs are recorded and locked (default /var/lib/blksnap/jobs for root)' },
} as const;

export const jobCommands: Command[] = [
  {
    name: 'job run',
    summary:
      'Run job NAME (/etc/blksnap/jobs/NAME.conf) once: its backup, its retention, and its share of the verify, with one exit status ' +
      '(0 done, 1 damage found, else the errno of what failed). A run never overlaps another of the same job: it waits or skips, as the job says.',
    positional: 'name',
    options: {
      name: { kind: 'value', help: 'the job (also given bare: blksnap job run NAME)', isRequired: true },
      ...DIRS,
      'metrics-textfile': { kind: 'value', help: "write the run's figures to DIR/blksnap-job-NAME.prom for node_exporter's textfile collector (default: the job's)" },
    },
    async run(o, io) {
      const name = value(o, 'name');
      if (!isJobName(name)) throw new BlkError('EINVAL', `job run: '${name}' is not a job name`);
      const job = readJob(name, o.values.get('jobs-dir') ?? JOBS_DIR);
      const textfile = o.values.get('metrics-textfile');
      const r = await runJob(job, {
        stateDir: o.values.get('state-dir') ?? defaultJobStateDir(),
        client: () => io.client(),
        ...(textfile === undefined ? {} : { metricsTextfile: textfile }),
        note: (text) => process.stderr.write(`blksnap job run ${name}: ${text}\n`),
      });
      const lines = [
        `job ${name}: ${r.result} in ${r.durationSeconds.toFixed(1)} s`,
        ...(r.backup ? [`  backup ${r.backup.id}: ${r.backup.readBytes} bytes read, ${r.backup.storedBytes} stored`] : []),
        ...(r.prune ? [`  prune: removed ${r.prune.removed.length} backups (${r.prune.removed.join(', ') || 'none'})`] : []),
        ...(r.verify ? [`  verify ${r.verify.share}: ${r.verify.ok ? 'ok' : 'DAMAGED'}, ${r.verify.packsChecked} of ${r.verify.packsTotal} packs read${r.verify.problems.map((p) => `\n    ${p}`).join('')}`] : []),
        ...(r.error ? [`  ${r.error.code}: ${r.error.message}`] : []),
      ];
      io.print(r, lines.join('\n'));
      if (r.result === 'failed') process.stderr.write(`blksnap job run ${name}: ${r.error?.code}: ${r.error?.message}\n`);
      io.exitStatus = exitStatusOf(r);
    },
  },
  {
    name: 'job list',
    summary: 'List the jobs: each one\'s repository, devices and schedule, its last run (when, the result) and its next run (by systemd-analyze calendar).',
    options: { ...DIRS },
    async run(o, io) {
      const dir = o.values.get('jobs-dir') ?? JOBS_DIR;
      const stateDir = o.values.get('state-dir') ?? defaultJobStateDir();
      const jobs = await Promise.all(
        jobNames(dir).map(async (name) => {
          try {
            const job = readJob(name, dir);
            const record = jobRecord(name, stateDir);
            return { name, repo: job.repo, devices: job.devices, schedule: job.schedule, runs: record.runs, last: record.last ? { result: record.last.result, finished: record.last.finished, ...(record.last.error ? { error: record.last.error } : {}) } : null, lastSuccess: record.lastSuccess, next: await nextElapse(job.schedule) };
          } catch (e) {
            return { name, error: (e as Error).message };
          }
        }),
      );
      io.print(
        { jobs },
        jobs.map((j) => ('error' in j ? `${j.name}  INVALID: ${j.error}` : `${j.name}  ${j.repo}  ${j.devices.join(',')}  schedule ${j.schedule}  last ${j.last ? `${j.last.finished} ${j.last.result}` : 'never'}  next ${j.next ?? 'unknown'}`)).join('\n') || `no jobs in ${dir}`,
      );
    },
  },
];
