// Owns backup_verify: every pack re-read and every chunk in it re-hashed (in worker threads), every
// pack index, manifest and device index (root and pages) checked (an encrypted repository's key objects
// too), and each damaged or missing chunk mapped to the backups it breaks.
import { BlkError, toBlkError } from '../errors.js';
import { ChunkIndex, packIds } from '../repository/chunk-index.js';
import { aadOf } from '../repository/cipher.js';
import { isZeroDigest } from '../repository/digest.js';
import { readIndexRoot } from '../repository/digest-index.js';
import { checkKeys } from '../repository/keys.js';
import { names } from '../repository/layout.js';
import type { Repository } from '../repository/repository.js';
import type { Progress } from './progress.js';
import { TaskWindow } from '../util/task-window.js';
import { WorkerPool } from './workers/worker-pool.js';

export interface VerifyOptions {
  /** Only this backup's chunks (the packs holding them), indexes and manifest. */
  id?: string;
  progress?: Progress;
}

export interface VerifyResult {
  ok: boolean;
  checkedChunks: number;
  /** Digests of chunks that are damaged or missing. */
  badChunks: string[];
  damagedBackups: string[];
  /** What is wrong, one line each (a damaged chunk, a missing page, a manifest failing its checksum). */
  problems: string[];
}

/** Digests a backup references (its chunks, and its index pages), or why they cannot all be read. */
export async function referencesOf(repo: Repository, id: string): Promise<{ chunks: Set<string>; pages: Set<string>; problems: string[] }> {
  const chunks = new Set<string>();
  const pages = new Set<string>();
  const problems: string[] = [];
  try {
    for (const d of (await repo.manifest(id)).devices) {
      const root = await readIndexRoot(repo.backend, names.indexRoot(id, d.index), repo.cipher);
      for (const hex of root.pages) {
        pages.add(hex);
        let stored: Buffer;
        try {
          stored = await repo.backend.read(names.page(hex));
        } catch {
          problems.push(`backup ${id}: index page ${hex} of ${d.name} is missing`);
          continue;
        }
        let page: Buffer;
        try {
          page = repo.cipher.open(stored, aadOf('page', names.page(hex)), `index page ${hex}`);
        } catch {
          page = Buffer.alloc(0);
        }
        if (page.length === 0 || repo.cipher.pageName(page) !== hex) {
          problems.push(`backup ${id}: index page ${hex} of ${d.name} is damaged`);
          continue;
        }
        for (let at = 0; at + 32 <= page.length; at += 32) if (!isZeroDigest(page, at)) chunks.add(page.toString('hex', at, at + 32));
      }
    }
  } catch (e) {
    problems.push(`backup ${id}: ${toBlkError(e).message}`);
  }
  return { chunks, pages, problems };
}

export async function verifyRepository(repo: Repository, o: VerifyOptions): Promise<VerifyResult> {
  return repo.whileShared(o.progress, () => verifyLocked(repo, o));
}

async function verifyLocked(repo: Repository, o: VerifyOptions): Promise<VerifyResult> {
  // What is checked is what the store holds, not a copy a cache kept.
  repo.backend.bypassCache();
  const ids = o.id === undefined ? await repo.backupIds() : [o.id];
  if (o.id !== undefined) await repo.manifest(o.id); // ENOENT for an unknown id
  const refs = new Map<string, Awaited<ReturnType<typeof referencesOf>>>();
  for (const id of ids) refs.set(id, await referencesOf(repo, id));
  const problems: string[] = [];
  if (repo.cipher.secret) problems.push(...(await checkKeys(repo.backend, repo.cipher.secret)));
  const index = await ChunkIndex.load(repo.backend, repo.cipher, problems);
  // The packs to read: all, or those holding a chunk of the one backup.
  let packs = await packIds(repo.backend);
  if (o.id !== undefined) {
    const wanted = new Set<string>();
    for (const hex of (refs.get(o.id) as { chunks: Set<string> }).chunks) {
      const at = index.find(Buffer.from(hex, 'hex'));
      if (at >= 0) wanted.add(index.location(at).pack);
    }
    packs = packs.filter((p) => wanted.has(p));
  }
  const bad = new Map<string, string>();
  let checked = 0;
  const workers = new WorkerPool('verify');
  try {
    await workers.runOnAll({ kind: 'cipher', secret: repo.cipher.secret });
    const sizes = new Map<string, number>();
    for (const id of packs) sizes.set(id, (await repo.backend.size(names.pack(id))) ?? 0);
    const sizeOf = (id: string): number => sizes.get(id) ?? 0;
    o.progress?.start('verify', packs.reduce((a, p) => a + sizeOf(p), 0));
    // A few packs at a time: an object store's are fetched into the cache, checked, and let go.
    const inFlight = new TaskWindow(workers.size * 2);
    const checkPack = async (id: string): Promise<void> => {
      const objects = [names.pack(id), names.packIndex(id)];
      let r: { checked: number; bad: Array<{ digest: string; reason: string }> };
      try {
        await repo.backend.fetchLocal(objects);
        const pack = repo.backend.localPath(names.pack(id));
        const idx = repo.backend.localPath(names.packIndex(id));
        if (pack === null || idx === null) throw new BlkError('ENOTSUP', `${repo.location}: packs are checked in local files only`);
        r = await workers.run({ kind: 'checkPack', pack, idx, id });
      } catch (e) {
        r = { checked: 0, bad: [{ digest: '', reason: `pack ${id}: ${toBlkError(e).message}` }] };
      } finally {
        await repo.backend.evictLocal(objects);
      }
      checked += r.checked;
      for (const b of r.bad) {
        if (b.digest === '') problems.push(b.reason);
        else bad.set(b.digest, b.reason);
      }
      o.progress?.advance(sizeOf(id));
    };
    try {
      for (const id of packs) await inFlight.add(checkPack(id));
    } finally {
      await inFlight.settle();
    }
    await inFlight.drain();
    o.progress?.done();
  } finally {
    await workers.close();
  }
  for (const [hex, reason] of bad) problems.push(`chunk ${hex} is damaged: ${reason}`);
  const damaged: string[] = [];
  for (const [id, r] of refs) {
    problems.push(...r.problems);
    let isDamaged = r.problems.length > 0;
    for (const hex of r.chunks) {
      if (bad.has(hex)) isDamaged = true;
      else if (!index.has(Buffer.from(hex, 'hex'))) {
        bad.set(hex, 'missing');
        problems.push(`chunk ${hex} is missing (backup ${id})`);
        isDamaged = true;
      }
    }
    if (isDamaged) damaged.push(id);
  }
  return { ok: bad.size === 0 && damaged.length === 0 && problems.length === 0, checkedChunks: checked, badChunks: [...bad.keys()].sort(), damagedBackups: damaged, problems };
}
