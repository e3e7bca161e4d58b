// Owns what a prune has marked for deletion (prune/pending.json): packs and index pages no backup
// referenced when it looked, in generations, each with the time it was marked and the sessions live
// then. Writers read it before they plan and never reuse what it names (a marked pack's chunks are
// stored again, a marked page written again); a later prune deletes a generation's objects only once
// every session live at its marking has ended and the grace period has passed, and only those still
// unreferenced and not written since. Pack ids and page names are object names the store lists
// anyway, so the file is plain JSON in every repository.
import { BlkError } from '../errors.js';
import type { Backend } from './backend.js';
import { isMissing } from './backend.js';

export const PENDING = 'prune/pending.json';

export interface MarkGeneration {
  /** When it was marked, by the marking prune's clock (ms since the epoch): the grace period counts from here. */
  markedAt: number;
  /** The store's own time for the marking (the pending object's modification time): an object written at or after it was written again since. */
  storeTime: number;
  /**
   * Ids of the sessions live when it was marked; null until the marking prune has listed them (one
   * that died before is dropped by the next prune and marked anew).
   */
  sessions: string[] | null;
  packs: string[];
  pages: string[];
}

export interface PendingDeletion {
  version: 1;
  generations: MarkGeneration[];
}

function isGeneration(v: unknown): v is MarkGeneration {
  const g = v as MarkGeneration;
  const strings = (a: unknown): boolean => Array.isArray(a) && a.every((s) => typeof s === 'string');
  return typeof g === 'object' && g !== null && Number.isFinite(g.markedAt) && Number.isFinite(g.storeTime) && (g.sessions === null || strings(g.sessions)) && strings(g.packs) && strings(g.pages);
}

/** What is marked now; nothing when no prune has marked anything. EIO when the file is damaged. */
export async function readPending(backend: Backend): Promise<PendingDeletion> {
  let bytes: Buffer;
  try {
    bytes = await backend.read(PENDING);
  } catch (e) {
    if (isMissing(e)) return { version: 1, generations: [] };
    throw e;
  }
  let file: PendingDeletion;
  try {
    file = JSON.parse(bytes.toString('utf8')) as PendingDeletion;
  } catch {
    throw new BlkError('EIO', `${backend.location}/${PENDING} is not readable JSON; a prune writes it anew (remove it only when no backup runs)`);
  }
  if (file?.version !== 1 || !Array.isArray(file.generations) || !file.generations.every(isGeneration)) throw new BlkError('EIO', `${backend.location}/${PENDING} is not a pending-deletion list of format 1`);
  return file;
}

export async function writePending(backend: Backend, pending: PendingDeletion): Promise<void> {
  const generations = pending.generations.filter((g) => g.packs.length + g.pages.length > 0);
  if (generations.length === 0) {
    await backend.remove(PENDING);
    return;
  }
  await backend.write(PENDING, Buffer.from(JSON.stringify({ version: 1, generations })));
  await backend.sync();
}

/** What a writer must not reuse: every marked pack and page. */
export interface Marked {
  packs: Set<string>;
  pages: Set<string>;
}

export function markedOf(pending: PendingDeletion): Marked {
  const marked: Marked = { packs: new Set(), pages: new Set() };
  for (const g of pending.generations) {
    for (const p of g.packs) marked.packs.add(p);
    for (const p of g.pages) marked.pages.add(p);
  }
  return marked;
}

/** What a writer must not reuse, read from the store (after its session is open). */
export async function readMarked(backend: Backend): Promise<Marked> {
  return markedOf(await readPending(backend));
}
