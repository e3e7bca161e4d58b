// Owns a tracker's state file (STATE/cbt/NAME.state): the map saved in the background and at a clean
// stop, with what the store looked like then, written whole or not at all and read back checked.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkError } from '../errors.js';
import { readStateFile, writeStateFile } from '../os/state-file.js';
import { zstdCompressAsync, zstdDecompress } from '../os/zstd.js';
import { CbtMap } from './cbt-map.js';

const TRACKER_KIND = 2;
/**
 * Tracker files: version 1 held the map's bytes as they are; version 2 holds them as one zstd frame.
 * A map is mostly long runs of one number (a 1 TiB device's two 2 MiB maps, never written, compress
 * to a few hundred bytes), and the take waits for this file's fsync (docs/performance.md).
 */
const TRACKER_VERSION = 2;
const TRACKER_VERSIONS = [TRACKER_VERSION, 1] as const;
/** Level 1: a map's runs compress as well as at higher levels, and fastest. */
const TRACKER_ZSTD_LEVEL = 1;
/** The largest map bytes a version 2 file may announce (CbtMap.deserialize checks the exact length). */
const TRACKER_MAP_MAXIMUM = 2 ** 31;

/** What a tracker's state file says besides the map: whether it was saved at a clean stop, and the store as it was then. */
export interface TrackerHeader {
  clean: boolean;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  isBlockDevice: boolean;
  /** When it was saved (wall clock): a crash's last writes came at most about a save interval later. */
  savedAtMs: number;
}

export type SavedTracker = { map: CbtMap; header: TrackerHeader } | { reason: string };

/** The tracker files of a state directory, one per tracked device. */
export class TrackerFiles {
  /** Where the trackers' state files and write-intent records are. */
  readonly dir: string;

  constructor(stateDir: string) {
    this.dir = path.join(stateDir, 'cbt');
  }

  #file(name: string): string {
    return path.join(this.dir, `${name}.state`);
  }

  /** The tracker as last saved, when its file is whole; otherwise why not, for cbtinfo. */
  async load(name: string): Promise<SavedTracker> {
    const r = await readStateFile(this.#file(name), TRACKER_KIND, TRACKER_VERSIONS);
    if (!r.ok) return { reason: r.reason.includes('ENOENT') ? 'no saved tracker' : `saved tracker refused: ${r.reason}` };
    let header: TrackerHeader;
    let headerLength: number;
    try {
      headerLength = r.payload.readUInt32LE(0);
      header = JSON.parse(r.payload.toString('utf8', 4, 4 + headerLength)) as TrackerHeader;
    } catch {
      return { reason: 'saved tracker refused: its header is not JSON' };
    }
    try {
      const stored = r.payload.subarray(4 + headerLength);
      return { map: CbtMap.deserialize(r.version === 1 ? stored : decompressMap(stored)), header };
    } catch (e) {
      return { reason: `saved tracker refused: ${(e as Error).message}` };
    }
  }

  /**
   * Why the store cannot be trusted to be as the saved tracker knew it, or null: another size; for
   * a regular file an mtime or ctime later than the save, by more than `lateMs` (after a crash the
   * daemon's own last writes come after its last save).
   */
  async storeChange(header: TrackerHeader, storePath: string, lateMs: number): Promise<string | null> {
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(storePath);
    } catch (e) {
      return `cannot look at the store: ${(e as NodeJS.ErrnoException).code ?? String(e)}`;
    }
    const size = header.isBlockDevice ? header.size : st.size;
    if (size !== header.size) return `the store changed size while not attached (${header.size} → ${size} bytes)`;
    if (header.isBlockDevice) return null;
    const latest = Math.max(header.mtimeMs, header.ctimeMs) + lateMs;
    if (lateMs === 0 ? st.mtimeMs !== header.mtimeMs || st.ctimeMs !== header.ctimeMs : st.mtimeMs > latest || st.ctimeMs > latest) {
      return 'the store was modified while not attached';
    }
    return null;
  }

  /**
   * Saves a device's tracker (its map as `CbtMap.serialize()` gave it). `clean` only at a clean
   * stop, after the last write; while running it is saved not clean, so a crash is known for one.
   */
  async save(name: string, storePath: string, map: Buffer, clean: boolean): Promise<void> {
    const st = await fs.promises.stat(storePath);
    const size = st.isBlockDevice() ? Number(map.readBigUInt64LE(0)) : st.size;
    const header: TrackerHeader = { clean, size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, isBlockDevice: st.isBlockDevice(), savedAtMs: Date.now() };
    const json = Buffer.from(JSON.stringify(header));
    const length = Buffer.alloc(4);
    length.writeUInt32LE(json.length);
    const mapLength = Buffer.alloc(8);
    mapLength.writeBigUInt64LE(BigInt(map.length));
    // In the thread pool: a map of scattered marks takes zstd some milliseconds per 4 MiB.
    const compressed = await zstdCompressAsync(map, TRACKER_ZSTD_LEVEL);
    await fs.promises.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeStateFile(this.#file(name), TRACKER_KIND, TRACKER_VERSION, Buffer.concat([length, json, mapLength, compressed]));
  }

  async forget(name: string): Promise<void> {
    await fs.promises.rm(this.#file(name), { force: true });
  }
}

/** A version 2 tracker's map bytes: their length (u64), then one zstd frame of them; EIO when damaged. */
function decompressMap(stored: Buffer): Buffer {
  if (stored.length < 8) throw new BlkError('EIO', 'its map is cut short');
  const length = Number(stored.readBigUInt64LE(0));
  if (length > TRACKER_MAP_MAXIMUM) throw new BlkError('EIO', `its map claims ${length} bytes`);
  const map = Buffer.allocUnsafe(length);
  zstdDecompress(stored.subarray(8), map);
  return map;
}
