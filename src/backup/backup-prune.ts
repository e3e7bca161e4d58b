// Owns backup_prune: which backups a keep-last/daily/weekly policy keeps, their removal, then a sweep:
// packs with no live chunk removed, packs with some rewritten with only those, unreferenced index pages
// removed. The sweep holds the repository's lock
// exclusively, so it waits for running backups (which hold it shared) and they wait for it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkError } from '../errors.js';
import { referencesOf } from './backup-verify.js';
import { packIds } from './chunk-index.js';
import { PackWriter, packPaths, RECORD_HEADER, readIdx } from './pack.js';
import { BACKUP_ID_PATTERN, layout, TEMP_MARK } from './layout.js';
import type { Progress } from './progress.js';
import type { Repository } from './repository.js';
import { isProcessRunning } from '../os/process-alive.js';

export interface PruneOptions {
  keepLast: number;
  keepDaily?: number;
  keepWeekly?: number;
  dryRun?: boolean;
  progress?: Progress;
}

export interface PruneResult {
  /** Kept by the policy, or because a daemon serves them (backup_attach). */
  kept: string[];
  /** What a user should know before trusting the result: backups dated far in the future (a wrong clock). */
  warnings: string[];
  removed: string[];
  removedChunks: number;
  removedPages: number;
  freedBytes: number;
  dryRun: boolean;
}

/** ISO 8601 week of a date, as YYYY-Www. */
function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86400000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

/** The ids a policy keeps, of `backups` (newest first): the last N, and the newest of each of the last N days and weeks. */
export function keptBy(backups: Array<{ id: string; time: Date }>, o: PruneOptions): Set<string> {
  const kept = new Set(backups.slice(0, o.keepLast).map((b) => b.id));
  const byPeriod = (n: number | undefined, period: (d: Date) => string): void => {
    const seen = new Set<string>();
    for (const b of backups) {
      if (seen.size >= (n ?? 0)) break;
      const key = period(b.time);
      if (seen.has(key)) continue;
      seen.add(key);
      kept.add(b.id);
    }
  };
  byPeriod(o.keepDaily, (d) => d.toISOString().slice(0, 10));
  byPeriod(o.keepWeekly, isoWeek);
  return kept;
}

function isHeld(repo: string, id: string): boolean {
  return isHeldIn(layout.backup(repo, id));
}

function isHeldIn(dir: string): boolean {
  return fs.readdirSync(dir).some((n) => n.startsWith('.held-by-') && isProcessRunning(Number(n.split('-')[2])));
}

/** A backup dated more than this ahead of now was made by a host whose clock is wrong. */
const FUTURE_SLACK_MS = 24 * 3600 * 1000;

/** Backups newest first by the time their manifests record (ties by id); those dated far ahead of `now` named. */
export function byRecordedTime(list: Array<{ id: string; time: string }>, now = Date.now()): { backups: Array<{ id: string; time: Date }>; warnings: string[] } {
  const backups = list
    .map((b) => ({ id: b.id, time: new Date(Number.isNaN(Date.parse(b.time)) ? 0 : Date.parse(b.time)) }))
    .sort((a, b) => b.time.getTime() - a.time.getTime() || (a.id < b.id ? 1 : -1));
  const warnings = backups
    .filter((b) => b.time.getTime() > now + FUTURE_SLACK_MS)
    .map((b) => `backup ${b.id} is dated ${b.time.toISOString()}, in the future: the clock of the host that made it is wrong, and it counts as the newest`);
  return { backups, warnings };
}

export async function pruneRepository(repo: Repository, o: PruneOptions): Promise<PruneResult> {
  if (!(o.keepLast >= 1)) throw new BlkError('EINVAL', 'backup_prune: --keep-last takes 1 or more (a prune never removes every backup)');
  const { backups, warnings } = byRecordedTime(repo.list());
  const kept = keptBy(backups, o);
  // A backup a live daemon serves as a device (backup_attach) stays, whatever the policy says.
  for (const b of backups) if (isHeld(repo.dir, b.id)) kept.add(b.id);
  const removed = backups.filter((b) => !kept.has(b.id)).map((b) => b.id);
  const result: PruneResult = { kept: [...kept].sort(), warnings, removed, removedChunks: 0, removedPages: 0, freedBytes: 0, dryRun: o.dryRun ?? false };
  if (o.dryRun) return result;
  for (const id of [...removed]) {
    // Renamed first: a crash mid-removal leaves no half backup that looks whole. A daemon that
    // placed its hold between the look above and the rename finds the backup gone, or is seen
    // here and the backup goes back: it is never removed while held.
    const doomed = path.join(layout.backupsDir(repo.dir), `.removing-${id}`);
    fs.renameSync(layout.backup(repo.dir, id), doomed);
    if (isHeldIn(doomed)) {
      fs.renameSync(doomed, layout.backup(repo.dir, id));
      removed.splice(removed.indexOf(id), 1);
      result.kept = [...result.kept, id].sort();
      continue;
    }
    fs.rmSync(doomed, { recursive: true, force: true });
  }
  const release = await repo.lock(true, () => o.progress?.note('waiting for running backups before the sweep'));
  try {
    const chunks = new Set<string>();
    const pages = new Set<string>();
    for (const id of repo.backupIds()) {
      const r = referencesOf(repo, id);
      // A backup whose references cannot all be read might still own chunks: sweep nothing.
      if (r.problems.length > 0) throw new BlkError('EIO', `backup_prune: backups removed, but no sweep: ${r.problems[0]} (run backup_verify)`);
      for (const c of r.chunks) chunks.add(c);
      for (const p of r.pages) pages.add(p);
    }
    const remove = (file: string): void => {
      result.freedBytes += fs.statSync(file).size;
      fs.rmSync(file, { force: true });
    };
    const chunksDir = layout.chunksDir(repo.dir);
    for (const id of packIds(repo.dir)) {
      const { pack, idx } = packPaths(chunksDir, id);
      const entries = readIdx(idx);
      const live = entries.filter((e) => chunks.has(e.digest.toString('hex')));
      if (live.length === entries.length) continue;
      result.removedChunks += entries.length - live.length;
      if (live.length > 0) {
        // The live records into a new pack, visible before the old one goes: a chunk is never absent.
        const writer = new PackWriter(chunksDir, null);
        const fd = fs.openSync(pack, 'r');
        try {
          for (const e of live) {
            const stored = Buffer.allocUnsafe(e.storedLength);
            if (fs.readSync(fd, stored, 0, stored.length, e.offset + RECORD_HEADER) !== stored.length) throw new BlkError('EIO', `pack ${id} is cut short; run backup_verify`);
            writer.appendStored(e.digest, stored, e.flags, e.size);
          }
        } finally {
          fs.closeSync(fd);
        }
        writer.close();
        for (const created of writer.closed) result.freedBytes -= fs.statSync(packPaths(chunksDir, created).pack).size + fs.statSync(packPaths(chunksDir, created).idx).size;
      }
      remove(idx);
      remove(pack);
    }
    const pagesDir = layout.pagesDir(repo.dir);
    for (const sub of fs.existsSync(pagesDir) ? fs.readdirSync(pagesDir) : []) {
      for (const name of fs.readdirSync(path.join(pagesDir, sub))) {
        if (name.includes(TEMP_MARK) || pages.has(name)) continue;
        remove(path.join(pagesDir, sub, name));
        result.removedPages++;
      }
    }
    sweepLeftovers(repo.dir);
  } finally {
    release();
  }
  return result;
}

/** Temporary files and partial backups of writers that are gone (a backup killed mid-way). */
function sweepLeftovers(repo: string): void {
  const pidOf = (name: string): number => Number(/(?:\.tmp\.|^\.partial-.*-)(\d+)(?:\.|$)/.exec(name)?.[1] ?? 0);
  const leftovers = (dir: string): void => {
    for (const name of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      if (name.includes(TEMP_MARK) && !isProcessRunning(pidOf(name))) fs.rmSync(path.join(dir, name), { force: true });
    }
  };
  leftovers(layout.chunksDir(repo));
  // A pack whose index never came (its writer died between the two renames) is garbage too.
  for (const name of fs.readdirSync(layout.chunksDir(repo))) {
    if (name.endsWith('.pack') && !fs.existsSync(path.join(layout.chunksDir(repo), `${name.slice(0, -5)}.idx`))) fs.rmSync(path.join(layout.chunksDir(repo), name), { force: true });
  }
  const pages = layout.pagesDir(repo);
  for (const sub of fs.existsSync(pages) ? fs.readdirSync(pages) : []) leftovers(path.join(pages, sub));
  for (const name of fs.readdirSync(layout.backupsDir(repo))) {
    if (BACKUP_ID_PATTERN.test(name)) continue;
    if (name.startsWith('.removing-') || (name.startsWith('.partial-') && !isProcessRunning(pidOf(name)))) fs.rmSync(path.join(layout.backupsDir(repo), name), { recursive: true, force: true });
  }
}
