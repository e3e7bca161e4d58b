// Owns backup_prune: which backups a keep-last/daily/weekly policy keeps and their removal, then a
// sweep in two phases under the prune lock (one prune at a time; backups, restores and verifies go on):
// packs and index pages no backup references are marked (a pack with some live chunks rewritten
// with only those first, the old one marked), and what an earlier prune marked is deleted once
// every session live at its marking has ended and the grace period has passed, unless a backup
// references it again (repository/pending-deletion.ts says why this never loses a chunk).
import { BlkError } from '../errors.js';
import { isProcessRunning } from '../os/process-alive.js';
import { backup as params } from '../params.js';
import { isMissing, type ObjectStat, type RepositoryLock } from '../repository/backend.js';
import { ChunkIndex } from '../repository/chunk-index.js';
import { BACKUP_ID_PATTERN, names, TEMP_MARK } from '../repository/layout.js';
import { lockLostError } from '../repository/lock-objects.js';
import { entriesOf, openIdx, type PackEntry, PackWriter, RECORD_HEADER, readPackIndex } from '../repository/pack.js';
import { type MarkGeneration, markedOf, PENDING, readPending, writePending } from '../repository/pending-deletion.js';
import { type Repository, temporaryOwner } from '../repository/repository.js';
import { liveSessions, removeDeadSessions } from '../repository/sessions.js';
import { referencesOf } from './backup-verify.js';
import { applyPolicy, byRecordedTime, type GroupBy, type RetentionGroup, type RetentionRules } from './retention-policy.js';
import type { Progress } from './progress.js';

export interface PruneOptions extends RetentionRules {
  /** Which backups the rules count together (default host and device). */
  groupBy?: GroupBy;
  dryRun?: boolean;
  /** What a prune marks is deleted no sooner than this after (ms; default params.pruneGraceMs). */
  graceMs?: number;
  progress?: Progress;
}

export interface PruneResult {
  /** Kept by the policy, or because a daemon serves them (backup_attach). */
  kept: string[];
  /** Per group: what the policy keeps, by which rules, and what it removes. */
  groups: RetentionGroup[];
  /** What a user should know before trusting the result: backups dated far in the future (a wrong clock). */
  warnings: string[];
  removed: string[];
  /** Chunks and index pages deleted by this prune (marked by it or an earlier one). */
  removedChunks: number;
  removedPages: number;
  freedBytes: number;
  /** Backups the policy would remove and objects due for deletion that the store still retains (S3 Object Lock): kept, and deleted by a prune after their retention. */
  retained: { backups: Array<{ id: string; until: string }>; objects: number };
  /** What stays marked for a later prune to delete: packs, pages, their bytes, and the earliest time the grace period allows. */
  pending: { packs: number; pages: number; bytes: number; deletableAfter: string | null };
  dryRun: boolean;
}

export async function pruneRepository(repo: Repository, o: PruneOptions): Promise<PruneResult> {
  const graceMs = o.graceMs ?? params.pruneGraceMs;
  if (!(graceMs >= 0)) throw new BlkError('EINVAL', 'backup_prune: --prune-grace takes a duration of 0 or more');
  const { backups, warnings } = byRecordedTime(await repo.list());
  const { groups, kept } = applyPolicy(backups, o, o.groupBy);
  // A backup a live daemon serves as a device (backup_attach) stays, whatever the policy says.
  for (const id of await repo.heldBackups()) if (backups.some((b) => b.id === id)) kept.add(id);
  const removed = backups.filter((b) => !kept.has(b.id)).map((b) => b.id);
  const result: PruneResult = { kept: [...kept].sort(), groups, warnings, removed, removedChunks: 0, removedPages: 0, freedBytes: 0, pending: { packs: 0, pages: 0, bytes: 0, deletableAfter: null }, retained: { backups: [], objects: 0 }, dryRun: o.dryRun ?? false };
  // A backup whose manifest the store still retains cannot go: kept, and named.
  const backend = repo.backend;
  for (const id of [...removed]) {
    const until = (await backend.stat(names.manifest(id)))?.retainedUntil ?? null;
    if (until === null || until <= Date.now()) continue;
    removed.splice(removed.indexOf(id), 1);
    result.kept = [...result.kept, id].sort();
    result.retained.backups.push({ id, until: new Date(until).toISOString() });
  }
  for (const g of groups) g.remove = g.remove.filter((id) => removed.includes(id));
  if (o.dryRun) return result;
  for (const id of [...removed]) {
    // The manifest first: a crash mid-removal leaves no half backup that looks whole. A daemon that
    // placed its hold between the look above and this finds the backup gone, or is seen here and
    // the manifest goes back: a backup is never removed while held.
    const manifest = await backend.read(names.manifest(id));
    await backend.remove(names.manifest(id));
    if ((await repo.heldBackups()).has(id)) {
      await backend.write(names.manifest(id), manifest);
      removed.splice(removed.indexOf(id), 1);
      result.kept = [...result.kept, id].sort();
      continue;
    }
    await backend.remove(names.backup(id));
  }
  const lock = await repo.lock((holder) => o.progress?.note(`waiting for another prune (the prune lock is held ${holder})`));
  try {
    await sweep(repo, result, graceMs, lock);
  } finally {
    await lock.release();
  }
  return result;
}

/** What every backup references now; EIO (and nothing deleted or marked) when a backup's references cannot all be read. */
async function allReferences(repo: Repository): Promise<{ chunks: Set<string>; pages: Set<string> }> {
  const chunks = new Set<string>();
  const pages = new Set<string>();
  for (const id of await repo.backupIds()) {
    const r = await referencesOf(repo, id);
    // A backup whose references cannot all be read might still own chunks: sweep nothing.
    if (r.problems.length > 0) throw new BlkError('EIO', `backup_prune: backups removed, but no sweep: ${r.problems[0]} (run backup_verify)`);
    for (const c of r.chunks) chunks.add(c);
    for (const p of r.pages) pages.add(p);
  }
  return { chunks, pages };
}

/** What a sweep works with: the references, where each chunk is found, and the deleting. */
interface SweepState {
  repo: Repository;
  result: PruneResult;
  refs: { chunks: Set<string>; pages: Set<string> };
  /** Chunk locations, a marked pack's only where no other pack has the chunk. */
  index: ChunkIndex;
  lock: RepositoryLock;
}

/** A pack's entries, or null when it has no index (its writer has not finished, or died). */
async function entriesOrNull(s: SweepState, id: string): Promise<PackEntry[] | null> {
  // One read: its absence is the answer, not a look first.
  let stored: Buffer;
  try {
    stored = await s.repo.backend.read(names.packIndex(id));
  } catch (e) {
    if (isMissing(e)) return null;
    throw e;
  }
  return entriesOf(openIdx(stored, id, `${s.repo.location}/${names.packIndex(id)}`, s.repo.cipher));
}

/** Whether a chunk of pack `id` is referenced and located there (no other pack has it). */
function isLiveIn(s: SweepState, id: string, e: PackEntry): boolean {
  if (!s.refs.chunks.has(e.digest.toString('hex'))) return false;
  const at = s.index.find(e.digest);
  return at >= 0 && s.index.location(at).pack === id;
}

/** Deletes an object, counting its bytes freed (`size` where it was looked at already). */
async function removeObject(s: SweepState, name: string, size?: number): Promise<void> {
  if (s.lock.isLost()) throw lockLostError(s.repo.location);
  s.result.freedBytes += size ?? (await s.repo.backend.size(name)) ?? 0;
  await s.repo.backend.remove(name);
}

/** Whether the store still retains an object it was looked at (S3 Object Lock). */
function isRetained(stat: ObjectStat | null): boolean {
  return (stat?.retainedUntil ?? 0) > Date.now();
}

/**
 * Deletes what generation `g` marked, when it is due: every session live at its marking ended and
 * the grace period passed. What a backup references again, or a writer wrote again, is unmarked
 * (taken out of `g`); what is deleted is taken out too. Returns whether `g` was due.
 */
async function deleteDue(s: SweepState, g: MarkGeneration, live: Set<string>, graceMs: number): Promise<boolean> {
  if (g.sessions === null || Date.now() - g.markedAt < graceMs || g.sessions.some((id) => live.has(id))) return false;
  const backend = s.repo.backend;
  // What the store still retains (S3 Object Lock) stays marked, for a later prune.
  const stillMarked: MarkGeneration = { ...g, packs: [], pages: [] };
  for (const id of g.packs) {
    const entries = await entriesOrNull(s, id);
    if (entries?.some((e) => isLiveIn(s, id, e))) continue; // referenced again: unmarked
    const pack = await backend.stat(names.pack(id));
    if (isRetained(pack)) {
      stillMarked.packs.push(id);
      s.result.retained.objects++;
      continue;
    }
    // The index first: a pack without one is marked, and goes when its generation does.
    if (entries) await removeObject(s, names.packIndex(id));
    await removeObject(s, names.pack(id), pack?.size ?? 0);
    s.result.removedChunks += entries?.filter((e) => !s.refs.chunks.has(e.digest.toString('hex'))).length ?? 0;
  }
  for (const hex of g.pages) {
    if (s.refs.pages.has(hex)) continue;
    const page = await backend.stat(names.page(hex));
    // Gone, or written again at or after the marking (a writer that did not reuse it): unmarked.
    if (page === null || page.modified >= g.storeTime) continue;
    if (isRetained(page)) {
      stillMarked.pages.push(hex);
      s.result.retained.objects++;
      continue;
    }
    await removeObject(s, names.page(hex), page.size);
    s.result.removedPages++;
  }
  g.packs = stillMarked.packs;
  g.pages = stillMarked.pages;
  return true;
}

/** The sweep under the prune lock: what is due deleted, then what is unreferenced now marked (see the top). */
async function sweep(repo: Repository, result: PruneResult, graceMs: number, lock: RepositoryLock): Promise<void> {
  const backend = repo.backend;
  // The sessions live before the references are read: a generation is due only when none of its
  // sessions is among them, so each of them committed (or gave up) before the reading began, and
  // what it committed is in the references. Listed after, a backup that ended between the two
  // would have its objects deleted as unreferenced.
  let live = new Set((await liveSessions(backend)).map((x) => x.id));
  const refs = await allReferences(repo);
  const pending = await readPending(backend);
  // A generation whose marking prune died before it listed the sessions protects nothing: dropped, marked anew below.
  pending.generations = pending.generations.filter((g) => g.sessions !== null);
  let marked = markedOf(pending);
  const s: SweepState = { repo, result, refs, index: await ChunkIndex.load(backend, repo.cipher, { last: marked.packs }), lock };
  for (const g of pending.generations) await deleteDue(s, g, live, graceMs);
  marked = markedOf(pending);

  const fresh: MarkGeneration = { markedAt: Date.now(), storeTime: 0, sessions: null, packs: [], pages: [] };
  const inChunks = await backend.list(names.chunks);
  const indexed = new Set(inChunks.filter((n) => n.endsWith('.idx') && !n.includes(TEMP_MARK)).map((n) => n.slice(0, -4)));
  for (const name of inChunks) {
    if (!name.endsWith('.pack') || name.includes(TEMP_MARK)) continue;
    const id = name.slice(0, -5);
    if (marked.packs.has(id)) continue;
    if (!indexed.has(id)) {
      fresh.packs.push(id); // a writer's, unfinished or dead
      continue;
    }
    const entries = entriesOf(await readPackIndex(backend, id, repo.cipher));
    const liveEntries = entries.filter((e) => isLiveIn(s, id, e));
    if (liveEntries.length === entries.length) continue;
    if (liveEntries.length > 0) {
      // The live records into a new pack, in place before the old one is marked: a chunk is never absent.
      const writer = new PackWriter(backend, repo.cipher, null);
      for (const e of liveEntries) {
        const stored = Buffer.allocUnsafe(e.storedLength);
        if ((await backend.readRange(names.pack(id), e.offset + RECORD_HEADER, stored)) !== stored.length) throw new BlkError('EIO', `pack ${id} is cut short; run backup_verify`);
        writer.appendStored(e.digest, stored, e.flags, e.size);
      }
      await writer.close();
      for (const created of writer.closed) result.freedBytes -= ((await backend.size(names.pack(created))) ?? 0) + ((await backend.size(names.packIndex(created))) ?? 0);
    }
    fresh.packs.push(id);
  }
  for (const sub of await backend.list(names.pages)) {
    if (!sub.endsWith('/')) continue;
    for (const name of await backend.list(names.pageFolder(sub))) {
      if (name.includes(TEMP_MARK) || refs.pages.has(name) || marked.pages.has(name)) continue;
      fresh.pages.push(name);
    }
  }
  if (fresh.packs.length + fresh.pages.length > 0) {
    // Written first, so a writer starting from here on reuses none of it; then the sessions that
    // may have read the repository before that, each of which the marking waits for.
    pending.generations.push(fresh);
    await writePending(backend, pending);
    fresh.storeTime = (await backend.stat(PENDING))?.modified ?? Date.now();
    live = new Set((await liveSessions(backend)).map((x) => x.id));
    fresh.sessions = [...live];
    await writePending(backend, pending);
    // Due at once (no grace, no session live): only against references read again now. A backup
    // that began after the references above and ended before the sessions were listed is in no
    // session of the marking, and what it committed was marked as unreferenced.
    if (graceMs === 0 && live.size === 0) {
      s.refs = await allReferences(repo);
      s.index = await ChunkIndex.load(backend, repo.cipher, { last: markedOf(pending).packs });
      if (await deleteDue(s, fresh, live, graceMs)) await writePending(backend, pending);
    }
  } else await writePending(backend, pending);
  await sweepLeftovers(repo, new Set((await liveSessions(backend)).flatMap((x) => (x.backup ? [x.backup] : []))));
  for (const g of pending.generations) {
    result.pending.packs += g.packs.length;
    result.pending.pages += g.pages.length;
    for (const id of g.packs) result.pending.bytes += ((await backend.size(names.pack(id))) ?? 0) + ((await backend.size(names.packIndex(id))) ?? 0);
    const after = new Date(g.markedAt + graceMs).toISOString();
    if (g.packs.length + g.pages.length > 0 && (result.pending.deletableAfter === null || after < result.pending.deletableAfter)) result.pending.deletableAfter = after;
  }
}

/**
 * What writers that are gone left: temporary files and partial backups of dead processes on this
 * host (a local repository's), backup folders without a manifest that no live session writes, and
 * session objects of holders that are gone.
 */
async function sweepLeftovers(repo: Repository, written: Set<string>): Promise<void> {
  const backend = repo.backend;
  const isDead = (name: string): boolean => {
    const pid = temporaryOwner(name);
    return pid !== null && !isProcessRunning(pid);
  };
  const folders = [names.chunks, names.backups, ...(await backend.list(names.pages)).filter((n) => n.endsWith('/')).map(names.pageFolder)];
  for (const folder of folders) {
    for (const name of await backend.list(folder)) if (isDead(name)) await backend.remove(`${folder}${name}`);
  }
  // Backup folders without a manifest whose writer is gone: removals cut short, a commit cut short.
  for (const name of await backend.list(names.backups)) {
    const id = name.replace(/\/$/, '');
    if (!name.endsWith('/') || name.includes(TEMP_MARK)) continue;
    if (!BACKUP_ID_PATTERN.test(id)) {
      const pid = /^\.partial-.*-(\d+)$/.exec(id)?.[1];
      if (id.startsWith('.removing-') || (pid !== undefined && !isProcessRunning(Number(pid)))) await backend.remove(`${names.backups}${id}/`);
      continue;
    }
    if (written.has(id)) continue;
    const entries = await backend.list(names.backup(id));
    if (!entries.includes('manifest.json')) await backend.remove(names.backup(id));
  }
  await removeDeadSessions(backend);
  await backend.abortUploads?.(Date.now() - params.pruneGraceMs);
}
