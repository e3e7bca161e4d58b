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
import { readMarked } from '../repository/pending-deletion.js';
import type { Backend } from '../repository/backend.js';
import type { Repository } from '../repository/repository.js';
import type { Progress } from './progress.js';
import { TaskWindow } from '../util/task-window.js';
import { WorkerPool } from './workers/worker-pool.js';

export interface VerifyOptions {
  /** Only this backup's chunks (the packs holding them), indexes and manifest. */
  id?: string;
  /** Read no pack: check every manifest, index root, page and pack index, and that every chunk a backup names is in one. */
  metadataOnly?: boolean;
  /** Read only a share of the packs: slice K of N (the packs whose id falls in it: N runs with K = 1..N read them all), or a random fraction. */
  subset?: { slice: number; of: number } | { fraction: number };
  /** Stop starting pack reads after this long (ms); the result says how many were read. */
  maxDurationMs?: number;
  progress?: Progress;
}

/** A `--read-data-subset` as given: N% or K/N; EINVAL otherwise. */
export function parseSubset(text: string): NonNullable<VerifyOptions['subset']> {
  const percent = /^(\d+(?:\.\d+)?)%$/.exec(text);
  if (percent) {
    const fraction = Number(percent[1]) / 100;
    if (fraction > 0 && fraction <= 1) return { fraction };
  }
  const slice = /^(\d+)\/(\d+)$/.exec(text);
  if (slice) {
    const [k, n] = [Number(slice[1]), Number(slice[2])];
    if (n >= 1 && n <= 100_000 && k >= 1 && k <= n) return { slice: k, of: n };
  }
  throw new BlkError('EINVAL', `--read-data-subset takes N% (above 0, at most 100) or K/N (1 <= K <= N), not '${text}'`);
}

/** Whether pack `id` is in a subset: by its id for a slice (packs ids are random), at random for a fraction. */
function inSubset(id: string, subset: VerifyOptions['subset']): boolean {
  if (!subset) return true;
  if ('fraction' in subset) return Math.random() < subset.fraction;
  return Number.parseInt(id.slice(0, 8), 16) % subset.of === subset.slice - 1;
}

export interface VerifyResult {
  ok: boolean;
  checkedChunks: number;
  /** Digests of chunks that are damaged or missing. */
  badChunks: string[];
  damagedBackups: string[];
  /** What is wrong, one line each (a damaged chunk, a missing page, a manifest failing its checksum). */
  problems: string[];
  /** Packs read and checked, of those there are to read (fewer with --read-data-subset, --max-duration, --metadata). */
  packsChecked: number;
  packsTotal: number;
}

/** Digests a backup references (its chunks, and its index pages), or why they cannot all be read. */
export async function referencesOf(repo: Repository, id: string): Promise<{ chunks: Set<string>; pages: Set<string>; problems: string[] }> {
  const chunks = new Set<string>();
  const pages = new Set<string>();
  const problems: string[] = [];
  try {
    for (const d of (await repo.manifest(id)).devices) {
      const root = await readIndexRoot(repo.backend, names.indexRoot(id, d.index), repo.cipher);
      // A few pages read at once (in a bucket each is a request of a round trip); what is wrong with
      // them told in page order.
      const wrong = new Map<number, string>();
      const checkPage = async (p: number, hex: string): Promise<void> => {
        let stored: Buffer;
        try {
          stored = await repo.backend.read(names.page(hex));
        } catch {
          wrong.set(p, `backup ${id}: index page ${hex} of ${d.name} is missing`);
          return;
        }
        let page: Buffer;
        try {
          page = repo.cipher.open(stored, aadOf('page', names.page(hex)), `index page ${hex}`);
        } catch {
          page = Buffer.alloc(0);
        }
        if (page.length === 0 || repo.cipher.pageName(page) !== hex) {
          wrong.set(p, `backup ${id}: index page ${hex} of ${d.name} is damaged`);
          return;
        }
        for (let at = 0; at + 32 <= page.length; at += 32) if (!isZeroDigest(page, at)) chunks.add(page.toString('hex', at, at + 32));
      };
      for (const hex of root.pages) pages.add(hex);
      await TaskWindow.each(root.pages, repo.backend.requestsAtOnce, (hex, p) => checkPage(p, hex));
      for (const p of [...wrong.keys()].sort((a, b) => a - b)) problems.push(wrong.get(p) as string);
    }
  } catch (e) {
    problems.push(`backup ${id}: ${toBlkError(e).message}`);
  }
  return { chunks, pages, problems };
}

/**
 * Reads pack `id` from the store itself (a bucket's by ranged requests from the worker, never from
 * a cache) and checks every record against its index and its digest, in a worker of `workers` (its
 * cipher set); `knownSize`, the pack's bytes where the caller looked already. A pack that cannot be
 * read is one bad entry with an empty digest, naming why.
 */
export async function checkPackInStore(backend: Backend, workers: WorkerPool<'verify'>, id: string, knownSize?: number): Promise<{ checked: number; bad: Array<{ digest: string; reason: string }> }> {
  try {
    if (backend.spec.kind === 's3') {
      const size = knownSize ?? (await backend.size(names.pack(id)));
      if (size === null) throw new BlkError('ENOENT', `${names.pack(id)} is not there`);
      return await workers.run({ kind: 'checkPack', id, repository: backend.spec, size });
    }
    const pack = backend.localPath(names.pack(id));
    const idx = backend.localPath(names.packIndex(id));
    if (pack === null || idx === null) throw new BlkError('ENOTSUP', `${backend.location}: packs are checked in local files only`);
    return await workers.run({ kind: 'checkPack', pack, idx, id });
  } catch (e) {
    return { checked: 0, bad: [{ digest: '', reason: `pack ${id}: ${toBlkError(e).message}` }] };
  }
}

export async function verifyRepository(repo: Repository, o: VerifyOptions): Promise<VerifyResult> {
  return repo.inSession('verify', () => verifyInSession(repo, o));
}

async function verifyInSession(repo: Repository, o: VerifyOptions): Promise<VerifyResult> {
  // Started first: the threads load their modules while this one reads the indexes.
  const workers = new WorkerPool('verify');
  try {
    return await verifyWith(repo, o, workers);
  } finally {
    await workers.close();
  }
}

async function verifyWith(repo: Repository, o: VerifyOptions, workers: WorkerPool<'verify'>): Promise<VerifyResult> {
  // What is checked is what the store holds, not a copy a cache kept.
  repo.backend.bypassCache();
  const ids = o.id === undefined ? await repo.backupIds() : [o.id];
  if (o.id !== undefined) await repo.manifest(o.id); // ENOENT for an unknown id
  const refs = new Map<string, Awaited<ReturnType<typeof referencesOf>>>();
  for (const id of ids) refs.set(id, await referencesOf(repo, id));
  const problems: string[] = [];
  if (repo.cipher.secret) problems.push(...(await checkKeys(repo.backend, repo.cipher.secret)));
  const index = await ChunkIndex.loadForReading(repo.backend, repo.cipher, problems);
  // The packs to read: all but those a prune marked for deletion (which it may delete meanwhile),
  // or those holding a chunk of the one backup; a marked pack a backup still reads from is read.
  const wanted = new Set<string>();
  for (const id of o.id === undefined ? ids : [o.id]) {
    for (const hex of (refs.get(id) as { chunks: Set<string> }).chunks) {
      const at = index.find(Buffer.from(hex, 'hex'));
      if (at >= 0) wanted.add(index.location(at).pack);
    }
  }
  const marked = (await readMarked(repo.backend)).packs;
  const every = (await packIds(repo.backend)).filter((p) => wanted.has(p) || (o.id === undefined && !marked.has(p)));
  const packs = o.metadataOnly ? [] : every.filter((p) => inSubset(p, o.subset));
  const started = Date.now();
  let packsChecked = 0;
  const bad = new Map<string, string>();
  let checked = 0;
  await workers.runOnAll({ kind: 'cipher', secret: repo.cipher.secret });
  // Each pack's size (in a bucket a request each: a few at once, as index pages are read).
  const sizes = new Map<string, number>();
  await TaskWindow.each(packs, repo.backend.requestsAtOnce, async (id) => void sizes.set(id, (await repo.backend.size(names.pack(id))) ?? 0));
  const sizeOf = (id: string): number => sizes.get(id) ?? 0;
  o.progress?.start('verify', packs.reduce((a, p) => a + sizeOf(p), 0));
  // A few packs at a time (in a bucket each read by range as it is checked).
  const inFlight = new TaskWindow(workers.size * 2);
  const checkPack = async (id: string): Promise<void> => {
    const r = await checkPackInStore(repo.backend, workers, id, sizes.get(id));
    checked += r.checked;
    for (const b of r.bad) {
      if (b.digest === '') problems.push(b.reason);
      else bad.set(b.digest, b.reason);
    }
    o.progress?.advance(sizeOf(id));
  };
  try {
    for (const id of packs) {
      if (o.maxDurationMs !== undefined && Date.now() - started > o.maxDurationMs) break;
      packsChecked++;
      await inFlight.add(checkPack(id));
    }
  } finally {
    await inFlight.settle();
  }
  await inFlight.drain();
  o.progress?.done();
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
  return { ok: bad.size === 0 && damaged.length === 0 && problems.length === 0, checkedChunks: checked, badChunks: [...bad.keys()].sort(), damagedBackups: damaged, problems, packsChecked, packsTotal: every.length };
}
