// Owns one run of a job (`blksnap job run NAME`): the backup, the retention and a share of the verify
// in one go, with one result; never two runs of a job at once (a flock of its own: the second waits
// or skips, as the job says); the run's record kept for `job list` and the next run's verify slice;
// and its figures for node_exporter's textfile collector, written whole (a temporary file renamed).
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createBackup } from '../../backup/backup-create.js';
import { pruneRepository } from '../../backup/backup-prune.js';
import { type VerifyOptions, verifyRepository } from '../../backup/backup-verify.js';
import type { BlksnapClient } from '../../client/connection.js';
import { BlkError, toBlkError, toExitStatus } from '../../errors.js';
import { tryLockAsync } from '../../os/libc.js';
import type { ParsedOptions } from '../command.js';
import { openRepository } from '../key-options.js';
import type { Job } from './job-file.js';

/** Where runs are recorded and locked: /var/lib/blksnap/jobs for root, else $XDG_STATE_HOME/blksnap/jobs. */
export function defaultJobStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (process.getuid?.() === 0 || !env.HOME) return '/var/lib/blksnap/jobs';
  return path.join(env.XDG_STATE_HOME ?? path.join(env.HOME, '.local', 'state'), 'blksnap', 'jobs');
}

export interface JobRecord {
  job: string;
  /** Runs that got as far as their backup (the verify slice rotates by it). */
  runs: number;
  last: JobRunResult | null;
  lastSuccess: string | null;
}

export interface JobRunResult {
  result: 'ok' | 'failed' | 'damaged' | 'skipped';
  started: string;
  finished: string;
  durationSeconds: number;
  /** The errno and message of a failed run. */
  error?: { code: string; message: string };
  backup?: { id: string; readBytes: number; storedBytes: number };
  prune?: { removed: string[]; removedChunks: number; freedBytes: number };
  verify?: { ok: boolean; share: string; packsChecked: number; packsTotal: number; problems: string[] };
  /** Backups per host and device after the run, and the repository's bytes. */
  groups?: Array<{ host: string; device: string; backups: number }>;
  repositoryBytes?: number;
}

function readRecord(file: string, job: string): JobRecord {
  try {
    const r = JSON.parse(fs.readFileSync(file, 'utf8')) as JobRecord;
    if (r && typeof r.runs === 'number') return r;
  } catch {
    // First run, or a record that cannot be read: start again from nothing.
  }
  return { job, runs: 0, last: null, lastSuccess: null };
}

/** Writes a file whole: a temporary beside it, renamed into place (a reader never sees half). */
function writeWhole(file: string, text: string, mode = 0o644): void {
  const temp = `${file}.tmp.${process.pid}`;
  fs.writeFileSync(temp, text, { mode });
  fs.renameSync(temp, file);
}

/** The job's record: its runs and the last one. */
export function jobRecord(job: string, stateDir = defaultJobStateDir()): JobRecord {
  return readRecord(path.join(stateDir, `${job}.json`), job);
}

/** Prometheus text of a run, for the textfile collector. */
export function metricsText(job: string, record: JobRecord): string {
  const last = record.last;
  const lines: string[] = [];
  const metric = (name: string, help: string, samples: Array<[Record<string, string>, number]>): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
    for (const [labels, value] of samples) {
      const text = Object.entries({ job, ...labels }).map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`))}"`).join(',');
      lines.push(`${name}{${text}} ${value}`);
    }
  };
  const seconds = (iso: string | null | undefined): number => (iso ? Date.parse(iso) / 1000 : 0);
  metric('blksnap_job_last_run_timestamp_seconds', 'when the last run of the job finished', [[{}, seconds(last?.finished)]]);
  metric('blksnap_job_last_success_timestamp_seconds', 'when the last successful run of the job finished (0: never)', [[{}, seconds(record.lastSuccess)]]);
  metric('blksnap_job_last_run_success', '1 when the last run succeeded (a skipped run counts), else 0', [[{}, last?.result === 'ok' || last?.result === 'skipped' ? 1 : 0]]);
  metric('blksnap_job_last_run_duration_seconds', 'how long the last run took', [[{}, last?.durationSeconds ?? 0]]);
  metric('blksnap_job_last_read_bytes', "the bytes the last run's backup read", [[{}, last?.backup?.readBytes ?? 0]]);
  metric('blksnap_job_last_stored_bytes', "the bytes the last run's backup added to the repository", [[{}, last?.backup?.storedBytes ?? 0]]);
  if (last?.verify) {
    metric('blksnap_job_last_verify_ok', "1 when the last run's verify found nothing wrong", [[{}, last.verify.ok ? 1 : 0]]);
    metric('blksnap_job_last_verify_packs_checked', "packs the last run's verify read", [[{}, last.verify.packsChecked]]);
  }
  if (last?.groups) metric('blksnap_job_backups', 'backups in the repository, per host and device', last.groups.map((g) => [{ host: g.host, device: g.device }, g.backups]));
  if (last?.repositoryBytes !== undefined) metric('blksnap_job_repository_bytes', 'the bytes of the repository', [[{}, last.repositoryBytes]]);
  return `${lines.join('\n')}\n`;
}

/** Takes the job's lock: at once, or (onOverlap 'wait') once the run holding it ends; null when skipped. */
async function lockJob(file: string, onOverlap: Job['onOverlap'], note: (text: string) => void): Promise<fs.promises.FileHandle | null> {
  const handle = await fs.promises.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  let told = false;
  while (!(await tryLockAsync(handle.fd, true))) {
    if (onOverlap === 'skip') {
      await handle.close();
      return null;
    }
    if (!told) note('the previous run of this job is still running: waiting for it');
    told = true;
    await new Promise((r) => setTimeout(r, 1000));
  }
  return handle;
}

export interface RunOptions {
  stateDir: string;
  client: () => Promise<BlksnapClient>;
  /** Overrides the job's metrics-textfile. */
  metricsTextfile?: string;
  note?: (text: string) => void;
}

/** Runs `job` once (see the top of this file). */
export async function runJob(job: Job, o: RunOptions): Promise<JobRunResult> {
  fs.mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
  const recordFile = path.join(o.stateDir, `${job.name}.json`);
  const started = new Date();
  const note = o.note ?? (() => undefined);
  const lock = await lockJob(path.join(o.stateDir, `${job.name}.lock`), job.onOverlap, note);
  if (!lock) {
    const now = new Date().toISOString();
    return { result: 'skipped', started: started.toISOString(), finished: now, durationSeconds: 0 };
  }
  const record = readRecord(recordFile, job.name);
  const result: JobRunResult = { result: 'ok', started: started.toISOString(), finished: '', durationSeconds: 0 };
  try {
    const options: ParsedOptions = { values: new Map(Object.entries(job.repoOptions)), lists: new Map(), flags: new Set() };
    const repo = await openRepository(options, job.repo);
    const client = await o.client();
    const made = await createBackup(repo, client, { devices: job.devices, ...(job.host ? { host: job.host } : {}), ...(job.diffStorage ? { diffStorage: job.diffStorage } : {}), discardAfterRead: job.discardAfterRead });
    record.runs++;
    result.backup = { id: made.id, readBytes: made.devices.reduce((a, d) => a + d.readBytes, 0), storedBytes: made.devices.reduce((a, d) => a + d.storedBytes, 0) };
    if (job.retention) {
      const pruned = await pruneRepository(repo, { ...job.retention, ...(job.pruneGraceMs === undefined ? {} : { graceMs: job.pruneGraceMs }) });
      result.prune = { removed: pruned.removed, removedChunks: pruned.removedChunks, freedBytes: pruned.freedBytes };
    }
    const v = job.verify;
    if (v.kind !== 'none') {
      // A slice each run, in turn: N runs read every pack.
      const slice = v.kind === 'slices' ? ((record.runs - 1) % v.of) + 1 : 0;
      const verifyOptions: VerifyOptions = v.kind === 'metadata' ? { metadataOnly: true } : v.kind === 'slices' ? { subset: { slice, of: v.of } } : { subset: { fraction: v.fraction } };
      const checked = await verifyRepository(repo, verifyOptions);
      const share = v.kind === 'metadata' ? 'metadata' : v.kind === 'slices' ? `${slice}/${v.of}` : `${v.fraction * 100}%`;
      result.verify = { ok: checked.ok, share, packsChecked: checked.packsChecked, packsTotal: checked.packsTotal, problems: checked.problems.slice(0, 20) };
      if (!checked.ok) result.result = 'damaged';
    }
    const groups = new Map<string, { host: string; device: string; backups: number }>();
    for (const b of await repo.list()) {
      for (const d of b.devices) {
        const key = `${b.host}\0${d.name}`;
        const g = groups.get(key) ?? { host: b.host, device: d.name, backups: 0 };
        g.backups++;
        groups.set(key, g);
      }
    }
    result.groups = [...groups.values()];
    result.repositoryBytes = await repo.backend.totalBytes();
  } catch (e) {
    const err = toBlkError(e);
    result.result = 'failed';
    result.error = { code: err.code, message: err.message };
  } finally {
    result.finished = new Date().toISOString();
    result.durationSeconds = (Date.parse(result.finished) - started.getTime()) / 1000;
    record.last = result;
    if (result.result === 'ok') record.lastSuccess = result.finished;
    writeWhole(recordFile, `${JSON.stringify(record, null, 2)}\n`, 0o600);
    const textfileDir = o.metricsTextfile ?? job.metricsTextfile;
    if (textfileDir) writeWhole(path.join(textfileDir, `blksnap-job-${job.name}.prom`), metricsText(job.name, record));
    await lock.close();
  }
  return result;
}

/** The exit status of a run: 0 done or skipped, 1 damage found, else the failure's errno. */
export function exitStatusOf(r: JobRunResult): number {
  if (r.result === 'failed') return toExitStatus(new BlkError((r.error?.code ?? 'EIO') as BlkError['code'], r.error?.message ?? ''));
  return r.result === 'damaged' ? 1 : 0;
}

/** When a systemd calendar expression next elapses (systemd-analyze), or null where that cannot be told. */
export function nextElapse(schedule: string): Promise<string | null> {
  return new Promise((resolve) => {
    execFile('systemd-analyze', ['calendar', schedule], { timeout: 5000 }, (error, stdout) => {
      if (error) return resolve(null);
      const m = /Next elapse:\s*(.+)/.exec(stdout);
      resolve(m ? (m[1] as string).trim() : null);
    });
  });
}
