// Owns the NBD metadata contexts an export offers: base:allocation, and its change tracking as
// qemu:dirty-bitmap:cbt-J (QEMU's one-flag format) and x-blksnap:cbt (the CBT byte itself).
import type { BlockDevice, ChangeMap } from '../../core/block-device.js';
import * as w from '../../nbd/wire.js';

/** The CBT byte of each block as the extent's flags (an unregistered namespace takes x-). */
export const CBT_CONTEXT = 'x-blksnap:cbt';
const DIRTY_PREFIX = 'qemu:dirty-bitmap:';
const CBT_BITMAP = /^qemu:dirty-bitmap:cbt-(\d{1,3})$/;
const NBD_STATE_DIRTY = 1;

export type MetaContext =
  | { id: number; name: string; kind: 'allocation' }
  /** Dirty where the block changed after snapshot `since`, within `generationId`. */
  | { id: number; name: string; kind: 'dirty'; since: number; generationId: string }
  | { id: number; name: string; kind: 'cbt' };

/** Context ids: fixed for the two single contexts, 16 + J for cbt-J. */
function contextFor(name: string, changes: ChangeMap | null): MetaContext | null {
  if (name === w.BASE_ALLOCATION) return { id: 1, name, kind: 'allocation' };
  if (changes === null) return null;
  if (name === CBT_CONTEXT) return { id: 2, name, kind: 'cbt' };
  const m = CBT_BITMAP.exec(name);
  const since = m ? Number(m[1]) : -1;
  if (since < 0 || since > changes.changesNumber) return null;
  return { id: 16 + since, name, kind: 'dirty', since, generationId: changes.generationId };
}

/** Every context an export offers now. */
function allNames(changes: ChangeMap | null): string[] {
  if (changes === null) return [w.BASE_ALLOCATION];
  return [w.BASE_ALLOCATION, CBT_CONTEXT, ...Array.from({ length: changes.changesNumber + 1 }, (_, j) => `${DIRTY_PREFIX}cbt-${j}`)];
}

/**
 * The contexts that match queries: for LIST, no query means all, and a namespace ("base:",
 * "qemu:", "qemu:dirty-bitmap:", "x-blksnap:") means all of it; for SET, only exact names count.
 */
export function matchContexts(device: BlockDevice, queries: readonly string[], isList: boolean): MetaContext[] {
  const changes = device.changes();
  const all = allNames(changes);
  const names = isList && queries.length === 0 ? all : all.filter((n) => queries.some((q) => q === n || (isList && q.endsWith(':') && n.startsWith(q))));
  return names.map((n) => contextFor(n, changes)).filter((c): c is MetaContext => c !== null);
}

/**
 * The extents of a CBT context over [offset, offset+length), on tracking-block edges, clipped to
 * the range, at most `maximum` of them. Dirty is reported wherever it cannot be ruled out: a
 * generation other than the one the context was chosen in makes every block dirty.
 */
export function changeExtents(context: MetaContext, changes: ChangeMap | null, offset: number, length: number, maximum: number): Array<{ length: number; flags: number }> {
  const end = offset + length;
  if (changes === null || (context.kind === 'dirty' && context.generationId !== changes.generationId)) {
    return [{ length, flags: context.kind === 'dirty' ? NBD_STATE_DIRTY : 0 }];
  }
  const flagsOf = (block: number): number => {
    const byte = block < changes.blockCount ? changes.byteAt(block) : 0;
    return context.kind === 'dirty' ? (byte > context.since ? NBD_STATE_DIRTY : 0) : byte;
  };
  const out: Array<{ length: number; flags: number }> = [];
  const size = changes.blockSize;
  let block = Math.floor(offset / size);
  let at = offset;
  while (at < end && out.length < maximum) {
    const flags = flagsOf(block);
    let next = (block + 1) * size;
    while (next < end && flagsOf(next / size) === flags) next += size;
    const runEnd = Math.min(next, end);
    out.push({ length: runEnd - at, flags });
    at = runEnd;
    block = Math.floor(at / size);
  }
  return out;
}
