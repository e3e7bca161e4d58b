// Owns backup_verify: every pack re-read and every chunk in it re-hashed (in worker threads), every
// pack index, manifest and device index (root and pages) checked, and each damaged or missing chunk
// mapped to the backups it breaks.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { toBlkError } from '../errors.js';
import { sha256 } from './chunk-file.js';
import { ChunkIndex, packIds } from './chunk-index.js';
import { readIndexRoot } from './digest-index.js';
import { isZeroDigest, layout } from './layout.js';
import { packPaths } from './pack.js';
import type { Progress } from './progress.js';
import type { Repository } from './repository.js';
import { WorkerPool } from './worker-pool.js';

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
export function referencesOf(repo: Repository, id: string): { chunks: Set<string>; pages: Set<string>; problems: string[] } {
  const chunks = new Set<string>();
  const pages = new Set<string>();
  const problems: string[] = [];
  try {
    for (const d of repo.manifest(id).devices) {
      const root = readIndexRoot(path.join(layout.backup(repo.dir, id), d.index));
      for (const hex of root.pages) {
        pages.add(hex);
        let page: Buffer;
        try {
          page = fs.readFileSync(layout.page(repo.dir, hex));
        } catch {
          problems.push(`backup ${id}: index page ${hex} of ${d.name} is missing`);
          continue;
        }
        if (sha256(page).toString('hex') !== hex) {
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
  const ids = o.id === undefined ? repo.backupIds() : [o.id];
  if (o.id !== undefined) repo.manifest(o.id); // ENOENT for an unknown id
  const refs = new Map(ids.map((id) => [id, referencesOf(repo, id)]));
  const problems: string[] = [];
  const index = ChunkIndex.load(repo.dir, problems);
  // The packs to read: all, or those holding a chunk of the one backup.
  let packs = packIds(repo.dir);
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
  const workers = new WorkerPool();
  try {
    const chunksDir = layout.chunksDir(repo.dir);
    const sizeOf = (id: string): number => fs.statSync(packPaths(chunksDir, id).pack, { throwIfNoEntry: false })?.size ?? 0;
    o.progress?.start('verify', packs.reduce((a, p) => a + sizeOf(p), 0));
    await Promise.all(packs.map(async (id) => {
      const { pack, idx } = packPaths(chunksDir, id);
      const r = await workers.run({ kind: 'checkPack', pack, idx }).catch((e: unknown) => ({ checked: 0, bad: [{ digest: '', reason: `pack ${id}: ${toBlkError(e).message}` }] }));
      checked += r.checked;
      for (const b of r.bad) {
        if (b.digest === '') problems.push(b.reason);
        else bad.set(b.digest, b.reason);
      }
      o.progress?.advance(sizeOf(id));
    }));
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
