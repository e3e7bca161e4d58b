// Owns what a fuzz target is: set up once, one input at a time, checks between batches.
import type { Rng } from './mutate.js';

export interface FuzzTarget {
  name: string;
  /** Set-up once per run. */
  open(): Promise<void>;
  /** One input: throws (or rejects) when a check fails. */
  run(rng: Rng): Promise<void>;
  /** Checks between batches (daemon alive, other connections work, memory). */
  check(): Promise<void>;
  close(): Promise<void>;
}
