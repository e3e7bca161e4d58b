// Owns knowing when a buffered write may stall: the kernel throttles writers (balance_dirty_pages)
// only once dirty and writeback pages pass the "freerun" ceiling, the midpoint of the background
// and hard dirty thresholds. Below it a write into the page cache is a memory copy.
import { writebackWatch } from '../params.js';
import * as fs from 'node:fs';


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
    if (milliseconds > writebackWatch.slowWriteMs) this.#backOffUntil = Date.now() + writebackWatch.backOffMs;
  }

  /** Stops sampling (tests; the process-wide watch runs for the process's life, unref'd). */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
  }

  #start(): void {
    this.#sample();
    this.#timer = setInterval(() => this.#sample(), writebackWatch.sampleMs);
    this.#timer.unref();
  }

  #sample(): void {
    try {
      const stat = this.#readVmstat();
      const value = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(stat)?.[1] ?? NaN);
      const dirty = value('nr_dirty') + value('nr_writeback');
      const ceiling = (value('nr_dirty_threshold') + value('nr_dirty_background_threshold')) / 2;
      this.#isBelowCeiling = dirty < ceiling * writebackWatch.freerunShare;
    } catch {
      this.#isBelowCeiling = false; // cannot tell: never risk stalling the event loop
    }
  }
}

/** One per process: the page cache is shared by every store. */
export const writeback = new WritebackWatch();
