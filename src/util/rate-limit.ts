// Owns a byte-rate limit shared by every thread of a process (--limit-upload, --limit-download): the
// time the link is next free lives in shared memory, and each transfer reserves its share of time
// there (one compare-and-swap) and waits until its slot starts. The average over any stretch stays
// at the rate; a single transfer goes at full speed within its slot.

/** A limit's shared state: made once, handed to other threads (it is shared, not copied). */
export interface RateLimitState {
  bytesPerSecond: number;
  /** [0]: when the link is next free, in µs on performance.timeOrigin's clock. */
  clock: SharedArrayBuffer;
}

export function newRateLimit(bytesPerSecond: number): RateLimitState {
  return { bytesPerSecond, clock: new SharedArrayBuffer(8) };
}

function nowMicros(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
}

/** Waits until `bytes` may go under `limit` (at once when none is set). */
export async function paced(limit: RateLimitState | null, bytes: number): Promise<void> {
  if (!limit || bytes <= 0) return;
  const free = new BigInt64Array(limit.clock);
  const cost = BigInt(Math.ceil((bytes / limit.bytesPerSecond) * 1e6));
  let start: bigint;
  for (;;) {
    const current = Atomics.load(free, 0);
    const now = nowMicros();
    // BigInts: Math.max does not take them.
    start = now;
    if (current > now) start = current;
    if (Atomics.compareExchange(free, 0, current, start + cost) === current) break;
  }
  const wait = Number(start - nowMicros()) / 1000;
  if (wait > 1) await new Promise((r) => setTimeout(r, wait));
}
