// Owns waiting for a group of started I/O operations without leaving one behind.

/**
 * Resolves when every promise has settled, with their values, or rejects with the first rejection if any. Unlike
 * Promise.all it never returns while an operation still runs: a caller that gives its buffer
 * back on failure must know nothing writes into it any more, and no rejection is left unhandled.
 */
export async function settleAll<T extends readonly unknown[]>(work: { readonly [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const results = await Promise.allSettled(work as ReadonlyArray<Promise<unknown>>);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

/** As settleAll, for a failure met while starting them: waits for those started, then throws `error`. */
export async function settleThenThrow(work: ReadonlyArray<Promise<unknown>>, error: unknown): Promise<never> {
  await Promise.allSettled(work);
  throw error;
}
