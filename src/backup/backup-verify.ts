// Owns backup_verify: every chunk file re-read and re-hashed (in worker threads), every manifest and
// index (root and pages) checked, and each damaged or missing chunk mapped to the backups it breaks.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { toBlkError } from '../errors.js';
import { readIndexRoot } from './digest-index.js';
import { isZeroDigest, layout, TEMP_MARK } from './layout.js';
import { sha256 } from './chunk-file.js';
import type { Progress } from './progress.js';
import type { Repository } from './repository.js';
import { WorkerPool } from './worker-pool.js';

export interface VerifyOptions {
  /** Only this backup's chunks, indexes and manifest. */
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

/** Every stored chunk file (`hex` or `hex.zst`), by digest. */
export function chunkFiles(repo: string): Map<string, string> {
  const out = new Map<string, string>();
  const root = layout.chunksDir(repo);
  for (const sub of fs.existsSync(root) ? fs.readdirSync(root) : []) {
    for (const name of fs.readdirSync(path.join(root, sub))) {
      if (name.includes(TEMP_MARK)) continue;
      out.set(name.replace(/\.zst$/, ''), path.join(root, sub, name));
    }
  }
  return out;
}

/** Digests a backup references (its chunks, and its index pages), or why they cannot be read. */
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
  const ids = o.id === undefined ? repo.backupIds() : [o.id];
  if (o.id !== undefined) repo.manifest(o.id); // ENOENT for an unknown id
  const refs = new Map(ids.map((id) => [id, referencesOf(repo, id)]));
  const stored = chunkFiles(repo.dir);
  let toCheck: Map<string, string>;
  if (o.id === undefined) toCheck = stored;
  else {
    toCheck = new Map();
    for (const hex of (refs.get(o.id) as { chunks: Set<string> }).chunks) {
      const file = stored.get(hex);
      if (file) toCheck.set(hex, file);
    }
  }
  const bad = new Map<string, string>();
  const workers = new WorkerPool();
  try {
    const files = [...toCheck.values()];
    o.progress?.start('verify', files.reduce((a, f) => a + fs.statSync(f).size, 0));
    const batches: string[][] = [];
    for (let i = 0; i < files.length; i += 64) batches.push(files.slice(i, i + 64));
    await Promise.all(batches.map(async (batch) => {
      const r = await workers.run({ kind: 'check', files: batch });
      for (const b of r.bad) bad.set(path.basename(b.file).replace(/\.zst$/, ''), b.reason);
      o.progress?.advance(batch.reduce((a, f) => a + fs.statSync(f).size, 0));
    }));
    o.progress?.done();
  } finally {
    await workers.close();
  }
  const problems: string[] = [];
  for (const [hex, reason] of bad) problems.push(`chunk ${hex} is damaged: ${reason}`);
  const damaged: string[] = [];
  for (const [id, r] of refs) {
    problems.push(...r.problems);
    let isDamaged = r.problems.length > 0;
    for (const hex of r.chunks) {
      if (bad.has(hex)) isDamaged = true;
      else if (!stored.has(hex)) {
        bad.set(hex, 'missing');
        problems.push(`chunk ${hex} is missing (backup ${id})`);
        isDamaged = true;
      }
    }
    if (isDamaged) damaged.push(id);
  }
  return { ok: bad.size === 0 && damaged.length === 0, checkedChunks: toCheck.size, badChunks: [...bad.keys()].sort(), damagedBackups: damaged, problems };
}
