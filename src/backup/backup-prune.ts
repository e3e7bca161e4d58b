// Owns backup_prune: which backups a keep-last/daily/weekly policy keeps, their removal, then a sweep:
// packs with no live chunk removed, packs with some rewritten with only those, unreferenced index pages
// removed. The sweep holds the repository's lock
// exclusively, so it waits for running backups (which hold it shared) and they wait for it.
import { BlkError } from '../errors.js';
import { isProcessRunning } from '../os/process-alive.js';
import { packIds } from '../repository/chunk-index.js';
import { BACKUP_ID_PATTERN, names, TEMP_MARK } from '../repository/layout.js';
import { entriesOf, PackWriter, RECORD_HEADER, readPackIndex } from '../repository/pack.js';
import { isHeldBy, type Repository, temporaryOwner } from '../repository/repository.js';
import { referencesOf } from './backup-verify.js';
import type { Progress } from './progress.js';

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
  const { backups, warnings } = byRecordedTime(await repo.list());
  const kept = keptBy(backups, o);
  // A backup a live daemon serves as a device (backup_attach) stays, whatever the policy says.
  for (const b of backups) if (await repo.isHeld(b.id)) kept.add(b.id);
  const removed = backups.filter((b) => !kept.has(b.id)).map((b) => b.id);
  const result: PruneResult = { kept: [...kept].sort(), warnings, removed, removedChunks: 0, removedPages: 0, freedBytes: 0, dryRun: o.dryRun ?? false };
  if (o.dryRun) return result;
  const backend = repo.backend;
  for (const id of [...removed]) {
    // The manifest first: a crash mid-removal leaves no half backup that looks whole. A daemon that
    // placed its hold between the look above and this finds the backup gone, or is seen here and
    // the manifest goes back: a backup is never removed while held.
    const manifest = await backend.read(names.manifest(id));
    await backend.remove(names.manifest(id));
    if (await repo.isHeld(id)) {
      await backend.write(names.manifest(id), manifest);
      removed.splice(removed.indexOf(id), 1);
      result.kept = [...result.kept, id].sort();
      continue;
    }
    await backend.remove(names.backup(id));
  }
  const release = await repo.lock(true, (holder) => o.progress?.note(`waiting for running backups before the sweep (the lock is held ${holder})`));
  try {
    await sweep(repo, result);
  } finally {
    await release();
  }
  return result;
}

/** Under the exclusive lock: packs and pages no backup references go, packs with some are rewritten with only those. */
async function sweep(repo: Repository, result: PruneResult): Promise<void> {
  const backend = repo.backend;
  const chunks = new Set<string>();
  const pages = new Set<string>();
  for (const id of await repo.backupIds()) {
    const r = await referencesOf(repo, id);
    // A backup whose references cannot all be read might still own chunks: sweep nothing.
    if (r.problems.length > 0) throw new BlkError('EIO', `backup_prune: backups removed, but no sweep: ${r.problems[0]} (run backup_verify)`);
    for (const c of r.chunks) chunks.add(c);
    for (const p of r.pages) pages.add(p);
  }
  const remove = async (name: string): Promise<void> => {
    result.freedBytes += (await backend.size(name)) ?? 0;
    await backend.remove(name);
  };
  for (const id of await packIds(backend)) {
    const entries = entriesOf(await readPackIndex(backend, id, repo.cipher));
    const live = entries.filter((e) => chunks.has(e.digest.toString('hex')));
    if (live.length === entries.length) continue;
    result.removedChunks += entries.length - live.length;
    if (live.length > 0) {
      // The live records into a new pack, in place before the old one goes: a chunk is never absent.
      const writer = new PackWriter(backend, repo.cipher, null);
      for (const e of live) {
        const stored = Buffer.allocUnsafe(e.storedLength);
        if ((await backend.readRange(names.pack(id), e.offset + RECORD_HEADER, stored)) !== stored.length) throw new BlkError('EIO', `pack ${id} is cut short; run backup_verify`);
        writer.appendStored(e.digest, stored, e.flags, e.size);
      }
      await writer.close();
      for (const created of writer.closed) result.freedBytes -= ((await backend.size(names.pack(created))) ?? 0) + ((await backend.size(names.packIndex(created))) ?? 0);
    }
    // The index first: a pack without one is a dead writer's, and goes at the next sweep.
    await remove(names.packIndex(id));
    await remove(names.pack(id));
  }
  for (const sub of await backend.list(names.pages)) {
    if (!sub.endsWith('/')) continue;
    for (const name of await backend.list(names.pageFolder(sub))) {
      if (name.includes(TEMP_MARK) || pages.has(name)) continue;
      await remove(`${names.pageFolder(sub)}${name}`);
      result.removedPages++;
    }
  }
  await sweepLeftovers(repo);
}

/** Temporary files and partial backups of writers that are gone (a backup killed mid-way), and packs whose writer died before their index. */
async function sweepLeftovers(repo: Repository): Promise<void> {
  const backend = repo.backend;
  const isDead = (name: string): boolean => {
    const pid = temporaryOwner(name);
    return pid !== null && !isProcessRunning(pid);
  };
  const folders = [names.chunks, names.backups, ...(await backend.list(names.pages)).filter((n) => n.endsWith('/')).map(names.pageFolder)];
  for (const folder of folders) {
    for (const name of await backend.list(folder)) if (isDead(name)) await backend.remove(`${folder}${name}`);
  }
  const inChunks = await backend.list(names.chunks);
  for (const name of inChunks) {
    if (name.endsWith('.pack') && !inChunks.includes(`${name.slice(0, -5)}.idx`)) await backend.remove(`${names.chunks}${name}`);
  }
  // Backup folders without a manifest whose writer is gone: removals cut short, and what older versions left.
  for (const name of await backend.list(names.backups)) {
    const id = name.replace(/\/$/, '');
    if (!name.endsWith('/') || name.includes(TEMP_MARK)) continue;
    if (!BACKUP_ID_PATTERN.test(id)) {
      const pid = /^\.partial-.*-(\d+)$/.exec(id)?.[1];
      if (id.startsWith('.removing-') || (pid !== undefined && !isProcessRunning(Number(pid)))) await backend.remove(`${names.backups}${id}`);
      continue;
    }
    const entries = await backend.list(names.backup(id));
    if (!entries.includes('manifest.json') && !isHeldBy(entries)) await backend.remove(names.backup(id));
  }
}
