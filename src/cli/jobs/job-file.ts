// Owns the job file (/etc/blksnap/jobs/NAME.conf): what a scheduled backup does, as `key = value`
// lines (`#` starts a comment). Every key is checked when the file is read, so a mistake is an error
// naming the file and line before anything runs, never a job that does half of what was meant.
//
//   repo = s3://backups/host-a          the repository (a directory, or s3://BUCKET[/PREFIX])
//   devices = vm1.img vm2.img           the attached devices backed up together (one snapshot)
//   schedule = daily                    systemd OnCalendar (blksnap-job@NAME.timer)
//   keep-last = 7                       retention, per host and device (keep-hourly, keep-daily,
//   keep-daily = 14                     keep-weekly, keep-monthly, keep-yearly, keep-within too)
//   verify = 1/7                        each run reads this share of the packs (K/N rotates through
//                                       the N slices run by run; N%; metadata; none)
//   on-overlap = wait                   a run that finds the previous one running: wait, or skip
//   discard-after-read = yes            the backup releases what it read from the snapshot
//   key-file = /root/repo.key           an encrypted repository's key (or password-file)
//   s3-endpoint = https://rgw:7480      and the other remote options of backup_create
//   metrics-textfile = /var/lib/prometheus/node-exporter   node_exporter's textfile directory
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkError } from '../../errors.js';
import { KEEP_COUNTS, type RetentionRules } from '../../backup/retention-policy.js';
import { parseDuration } from '../../util/duration.js';

export const JOBS_DIR = '/etc/blksnap/jobs';

export interface Job {
  name: string;
  file: string;
  repo: string;
  devices: string[];
  schedule: string;
  /** Retention by its rules (keep-last, keep-daily, …, keep-within); null: no prune. */
  retention: RetentionRules | null;
  pruneGraceMs?: number;
  verify: { kind: 'none' } | { kind: 'metadata' } | { kind: 'slices'; of: number } | { kind: 'fraction'; fraction: number };
  onOverlap: 'wait' | 'skip';
  /** The backup trims what it read on the image (backup_create --discard-after-read). */
  discardAfterRead: boolean;
  /** Options handed to the repository commands as they are (key-file, s3-endpoint, cache-dir, …). */
  repoOptions: Record<string, string>;
  host?: string;
  diffStorage?: string;
  metricsTextfile?: string;
}

const REPO_KEYS = ['key-file', 'password-file', 's3-endpoint', 's3-region', 's3-addressing', 's3-ca', 'cache-dir', 'limit-upload', 'limit-download'];

/** A job name: a file name of its own, usable in a systemd instance name. */
export function isJobName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name);
}

/** Reads and checks job NAME in `dir`; ENOENT when there is none, EINVAL naming the line that is wrong. */
export function readJob(name: string, dir = JOBS_DIR): Job {
  if (!isJobName(name)) throw new BlkError('EINVAL', `'${name}' is not a job name (letters, digits, '_', '.', '-'; at most 64)`);
  const file = path.join(dir, `${name}.conf`);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BlkError('ENOENT', `no job ${name}: ${file} does not exist`);
    throw new BlkError('EACCES', `cannot read ${file}: ${(e as NodeJS.ErrnoException).code}`);
  }
  const values = new Map<string, { value: string; line: number }>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (line === '') return;
    const m = /^([a-z0-9-]+)\s*=\s*(.*)$/.exec(line);
    if (!m) throw new BlkError('EINVAL', `${file}:${i + 1}: not 'key = value'`);
    if (values.has(m[1] as string)) throw new BlkError('EINVAL', `${file}:${i + 1}: ${m[1]} is given twice`);
    values.set(m[1] as string, { value: (m[2] as string).trim(), line: i + 1 });
  });
  const known = new Set(['repo', 'devices', 'schedule', 'verify', 'on-overlap', 'host', 'diff-storage', 'discard-after-read', 'metrics-textfile', 'keep-within', 'prune-grace', ...Object.keys(KEEP_COUNTS), ...REPO_KEYS]);
  for (const [key, { line }] of values) if (!known.has(key)) throw new BlkError('EINVAL', `${file}:${line}: unknown key '${key}'`);
  const at = (key: string): string => `${file}:${values.get(key)?.line ?? 0}`;
  const required = (key: string): string => {
    const v = values.get(key)?.value;
    if (!v) throw new BlkError('EINVAL', `${file}: '${key}' is required`);
    return v;
  };
  const count = (key: string): number | undefined => {
    const v = values.get(key)?.value;
    if (v === undefined) return undefined;
    if (!/^\d{1,6}$/.test(v)) throw new BlkError('EINVAL', `${at(key)}: ${key} takes a whole number, not '${v}'`);
    return Number(v);
  };
  const keep: Partial<RetentionRules> = {};
  for (const [key, rule] of Object.entries(KEEP_COUNTS)) {
    const n = count(key);
    if (n !== undefined) keep[rule] = n;
  }
  const within = values.get('keep-within');
  if (within) keep.keepWithinMs = parseDuration(within.value, `${at('keep-within')}: keep-within`);
  if (Object.keys(keep).length > 0 && !(keep.keepLast !== undefined && keep.keepLast >= 1)) throw new BlkError('EINVAL', `${file}: a job that prunes needs keep-last of 1 or more`);
  const verifyText = values.get('verify')?.value ?? 'none';
  let verify: Job['verify'];
  const slices = /^1\/(\d+)$/.exec(verifyText);
  const percent = /^(\d+(?:\.\d+)?)%$/.exec(verifyText);
  if (verifyText === 'none' || verifyText === 'metadata') verify = { kind: verifyText };
  else if (slices && Number(slices[1]) >= 1 && Number(slices[1]) <= 100_000) verify = { kind: 'slices', of: Number(slices[1]) };
  else if (percent && Number(percent[1]) > 0 && Number(percent[1]) <= 100) verify = { kind: 'fraction', fraction: Number(percent[1]) / 100 };
  else throw new BlkError('EINVAL', `${at('verify')}: verify takes 1/N (a slice each run, all in N runs), N%, metadata or none, not '${verifyText}'`);
  const onOverlap = values.get('on-overlap')?.value ?? 'wait';
  if (onOverlap !== 'wait' && onOverlap !== 'skip') throw new BlkError('EINVAL', `${at('on-overlap')}: on-overlap takes wait or skip, not '${onOverlap}'`);
  const schedule = values.get('schedule')?.value ?? 'daily';
  if (/[\n\r\\]/.test(schedule)) throw new BlkError('EINVAL', `${at('schedule')}: not a calendar expression`);
  const repoOptions: Record<string, string> = {};
  for (const key of REPO_KEYS) {
    const v = values.get(key)?.value;
    if (v !== undefined) repoOptions[key] = v;
  }
  const devices = required('devices').split(/\s+/);
  const optional = (key: string): string | undefined => values.get(key)?.value || undefined;
  const grace = optional('prune-grace');
  const discard = optional('discard-after-read') ?? 'no';
  if (discard !== 'yes' && discard !== 'no') throw new BlkError('EINVAL', `${at('discard-after-read')}: discard-after-read takes yes or no, not '${discard}'`);
  const host = optional('host');
  const diffStorage = optional('diff-storage');
  const metricsTextfile = optional('metrics-textfile');
  return {
    name,
    file,
    repo: required('repo'),
    devices,
    schedule,
    retention: keep.keepLast === undefined ? null : { ...keep, keepLast: keep.keepLast },
    ...(grace === undefined ? {} : { pruneGraceMs: parseDuration(grace, `${at('prune-grace')}: prune-grace`) }),
    verify,
    onOverlap,
    discardAfterRead: discard === 'yes',
    repoOptions,
    ...(host === undefined ? {} : { host }),
    ...(diffStorage === undefined ? {} : { diffStorage }),
    ...(metricsTextfile === undefined ? {} : { metricsTextfile }),
  };
}

/** The names of the jobs in `dir` (its NAME.conf files), sorted. */
export function jobNames(dir = JOBS_DIR): string[] {
  try {
    return fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.conf') && isJobName(f.slice(0, -5)))
      .map((f) => f.slice(0, -5))
      .sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}
