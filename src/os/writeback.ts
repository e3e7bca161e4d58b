// Owns knowing when a buffered write may stall: the kernel throttles writers (balance_dirty_pages)
// only once dirty and writeback pages pass the "freerun" ceiling, the midpoint of the background
// and hard dirty thresholds. Below it a write into the page cache is a memory copy.
import * as fs from 'node:fs';

/** Sampling period of /proc/vmstat: at 2 GB/s, 200 MB can be dirtied between two looks. */
const SAMPLE_MS = 100;
/** Synchronous writes only while dirty pages stay below this share of the freerun ceiling. */
const FREERUN_SHARE = 0.5;
/** A synchronous write slower than this was throttled or waited: the pool takes writes for a while. */
const SLOW_WRITE_MS = 10;
const BACK_OFF_MS = 5000;

export class WritebackWatch {
  #isBelowCeiling = true;
  #backOffUntil = 0;
  #timer: NodeJS.Timeout | null = null;
  #readVmstat: () => string;

  constructor(readVmstat: () => string = () => fs.readFileSync('/proc/vmstat', 'latin1')) {
    this.#readVmstat = readVmstat;
  }

  /** True when a buffered write should not block: far below the throttling point, no recent stall. */
  get allowsSyncWrite(): boolean {
    if (this.#timer === null) this.#start();
    return this.#isBelowCeiling && Date.now() >= this.#backOffUntil;
  }

  /** Reports how long a synchronous write took; a slow one sends writes to the thread pool for a while. */
  noteSyncWrite(milliseconds: number): void {
    if (milliseconds > SLOW_WRITE_MS) this.#backOffUntil = Date.now() + BACK_OFF_MS;
  }

  /** Stops sampling (tests; the process-wide watch runs for the process's life, unref'd). */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
  }

  #start(): void {
    this.#sample();
    this.#timer = setInterval(() => this.#sample(), SAMPLE_MS);
    this.#timer.unref();
  }

  #sample(): void {
    try {
      const stat = this.#readVmstat();
      const value = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(stat)?.[1] ?? NaN);
      const dirty = value('nr_dirty') + value('nr_writeback');
      const ceiling = (value('nr_dirty_threshold') + value('nr_dirty_background_threshold')) / 2;
      this.#isBelowCeiling = dirty < ceiling * FREERUN_SHARE;
    } catch {
      this.#isBelowCeiling = false; // cannot tell: never risk stalling the event loop
    }
  }
}

/** One per process: the page cache is shared by every store. */
export const writeback = new WritebackWatch();
