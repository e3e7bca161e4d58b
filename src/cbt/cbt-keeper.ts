// Owns durable change tracking: each tracked device's map saved in the background, its
// write-intent record, recovery after a crash, and the saves a take and a clean stop wait for.
import { toBlkError } from '../errors.js';
import { CbtMap } from './cbt-map.js';
import { IntentFiles, readIntent } from './intent-files.js';
import { TrackerFiles } from './tracker-file.js';
import { WriteIntent } from './write-intent.js';

/** Where a tracker's map came from (cbtinfo's origin). */
export type TrackerOrigin = { kind: 'new'; reason: string } | { kind: 'restored' } | { kind: 'recovered'; reason: string };

/** A tracker as the keeper opens it for a device: its map, where that came from, its write-intent record. */
export interface KeptTracker {
  map: CbtMap;
  origin: TrackerOrigin;
  intent: WriteIntent;
}

/** A device as the keeper sees it: its name, its store's path, and its tracker's current map. */
export interface Tracked {
  readonly name: string;
  readonly path: string;
  readonly tracker: { readonly cbt: CbtMap };
}

export interface CbtKeeperOptions {
  /** The daemon's state directory: trackers are kept in its cbt/ folder. */
  stateDir: string;
  /** --cbt-region: bytes one write-intent bit stands for. */
  regionSize: number;
  /** --cbt-sync-interval: how often a written-to map is saved (and untouched regions leave the record). */
  syncIntervalMs: number;
  log(line: string): void;
}

/** Slack beyond two save intervals for a crash's last writes after the last save (a slow save, clock steps). */
const CRASH_WRITE_SLACK_MS = 5000;

/** A map from the state directory and where it came from, or why there is none. */
type Loaded = { map: CbtMap; origin: TrackerOrigin } | { reason: string };

interface Kept {
  device: Tracked;
  intent: WriteIntent;
  files: IntentFiles;
  /** The save under way or last done: saves of one device run one after another. */
  saving: Promise<void>;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)} MiB`;
}

export class CbtKeeper {
  #o: CbtKeeperOptions;
  #files: TrackerFiles;
  #kept = new Map<string, Kept>();
  #timer: NodeJS.Timeout | null = null;

  constructor(options: CbtKeeperOptions) {
    this.#o = options;
    this.#files = new TrackerFiles(options.stateDir);
  }

  /**
   * Before a tracked device is published: its map from the state directory (restored after a clean
   * stop; recovered after a crash, with every write-intent region marked; else new, with the reason),
   * saved again at once as running, and a write-intent record that starts empty. `restore` is false
   * for a new attach, which always starts a new generation.
   */
  async open(name: string, storePath: string, capacity: number, restore: boolean): Promise<{ tracker: KeptTracker; intent: WriteIntent; files: IntentFiles }> {
    const loaded: Loaded = restore ? await this.#load(name, storePath) : { reason: 'first attached' };
    let map: CbtMap;
    let origin: TrackerOrigin;
    if ('map' in loaded && loaded.map.capacity === capacity) {
      map = loaded.map;
      origin = loaded.origin;
    } else {
      map = new CbtMap(capacity);
      origin = { kind: 'new', reason: 'map' in loaded ? `capacity changed from ${loaded.map.capacity} to ${capacity} bytes` : loaded.reason };
    }
    // The map (with any recovered marks) is durable before the old record is emptied.
    await this.#files.save(name, storePath, map.serialize(), false);
    const files = await IntentFiles.open(this.#files.dir, name);
    const intent = new WriteIntent(capacity, this.#o.regionSize, files);
    try {
      await intent.writeNow();
    } catch (e) {
      await files.close();
      throw e;
    }
    return { tracker: { map, origin, intent }, intent, files };
  }

  async #load(name: string, storePath: string): Promise<Loaded> {
    const state = this.#files;
    const saved = await state.load(name);
    if ('reason' in saved) return saved;
    const { map, header } = saved;
    if (header.clean) {
      const changed = await state.storeChange(header, storePath, 0);
      return changed === null ? { map, origin: { kind: 'restored' } } : { reason: changed };
    }
    const intent = await readIntent(state.dir, name);
    if (intent === null || 'reason' in intent) {
      return { reason: `the daemon did not stop cleanly and its write-intent record is ${intent === null ? 'missing' : `unusable (${intent.reason})`}` };
    }
    const changed = await state.storeChange(header, storePath, 2 * this.#o.syncIntervalMs + CRASH_WRITE_SLACK_MS);
    if (changed !== null) return { reason: changed };
    // Every region that may have been written since the save: marked with the active number.
    let regions = 0;
    let bytes = 0;
    for (let r = 0; r < intent.regions.length; r++) {
      if (intent.regions[r] === 0) continue;
      const offset = r * intent.regionSize;
      if (offset >= map.capacity) continue;
      const length = Math.min(intent.regionSize, map.capacity - offset);
      map.mark(offset, length);
      regions++;
      bytes += length;
    }
    return { map, origin: { kind: 'recovered', reason: `the daemon did not stop cleanly: ${regions} write-intent region${regions === 1 ? '' : 's'} (${mib(bytes)}) marked as changed` } };
  }

  /** The device is published: its map is saved in the background from now on. */
  keep(device: Tracked, opened: { intent: WriteIntent; files: IntentFiles }): void {
    this.#kept.set(device.name, { device, intent: opened.intent, files: opened.files, saving: Promise.resolve() });
    if (this.#timer === null) {
      this.#timer = setInterval(() => this.#saveTouched(), this.#o.syncIntervalMs);
      this.#timer.unref();
    }
  }

  /** Closes what open() opened for a device that was not published after all. */
  async abandon(opened: { files: IntentFiles }): Promise<void> {
    await opened.files.close().catch(() => undefined);
  }

  #saveTouched(): void {
    for (const kept of this.#kept.values()) {
      if (kept.intent.isTouched) this.#save(kept, false).catch(() => undefined);
    }
  }

  /**
   * Saves the map now (after the ones under way): the take's switch is durable once this resolves.
   * When it cannot be saved, the saved tracker is removed (a crash then gives a new generation,
   * never numbers that went back) and the error is thrown.
   */
  async saveNow(device: Tracked): Promise<void> {
    const kept = this.#kept.get(device.name);
    if (!kept) return;
    try {
      await this.#save(kept, false);
    } catch (e) {
      await this.#files.forget(device.name).catch((f: unknown) => this.#o.log(`cannot remove the stale tracker of ${device.name}: ${toBlkError(f).toString()}`));
      throw e;
    }
  }

  #save(kept: Kept, clean: boolean): Promise<void> {
    const run = async (): Promise<void> => {
      const { device, intent } = kept;
      // The copy saved and the regions kept after it are taken in one turn.
      intent.beginSave();
      const map = device.tracker.cbt.serialize();
      try {
        await this.#files.save(device.name, device.path, map, clean);
      } catch (e) {
        this.#o.log(`cannot save the tracker of ${device.name}: ${toBlkError(e).toString()}; its write-intent record keeps every region written since the last save`);
        throw e;
      }
      await intent.endSave().catch((e: unknown) => this.#o.log(`cannot shrink the write-intent record of ${device.name}: ${toBlkError(e).toString()}`));
    };
    const saving = kept.saving.then(run, run);
    kept.saving = saving.catch(() => undefined);
    return saving;
  }

  /**
   * A clean stop of a device, after its last write: the map saved as clean. Its record stays on
   * disk, unused (a clean state file is trusted as it is) until the next start empties it.
   */
  async stop(device: Tracked): Promise<void> {
    const kept = this.#kept.get(device.name);
    if (!kept) return;
    this.#kept.delete(device.name);
    this.#stopTimerWhenIdle();
    await this.#save(kept, true).catch(() => undefined);
    await kept.files.close().catch(() => undefined);
  }

  /** Detach: tracking ends, nothing of it comes back at the next start. */
  async forget(name: string): Promise<void> {
    const kept = this.#kept.get(name);
    this.#kept.delete(name);
    this.#stopTimerWhenIdle();
    if (kept) {
      await kept.saving;
      await kept.files.close().catch(() => undefined);
    }
    await this.#files.forget(name);
    await IntentFiles.remove(this.#files.dir, name);
  }

  #stopTimerWhenIdle(): void {
    if (this.#kept.size === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }
}
