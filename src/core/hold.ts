// Owns holding a set of devices still: no new write admitted, the ones in flight drained. The take and
// the CBT switch alone both start this way.
import type { Tracker } from './tracker.js';

/**
 * Holds every tracker, then waits until their writes in flight are done; resolves with the release.
 * All holds are placed before any drain is awaited, so a tracker another hold has (EBUSY) fails at
 * once and exactly those already held are released again: nothing is left holding writes back.
 */
export async function holdAll(trackers: readonly Tracker[]): Promise<() => void> {
  const held: Tracker[] = [];
  const release = (): void => {
    for (const t of held.splice(0)) t.release();
  };
  try {
    const drains: Array<Promise<void>> = [];
    for (const t of trackers) {
      drains.push(t.hold());
      held.push(t);
    }
    await Promise.all(drains);
  } catch (e) {
    release();
    throw e;
  }
  return release;
}
