// Owns reading planned runs of chunks from an NBD export: several connections, many requests in flight
// on each, and a bound on bytes read but not yet handed on, so memory stays bounded for any device.
import { NbdClient, type NbdTlsOptions } from '../client/nbd-client.js';
import { backup as params } from '../params.js';

/** Consecutive chunks to read in one request. */
export interface ChunkRun {
  first: number;
  count: number;
}

/** Cuts a list of chunk indices (ascending) into runs of at most `maximumChunks`. */
export function runsOf(chunks: Iterable<number>, maximumChunks: number): ChunkRun[] {
  const runs: ChunkRun[] = [];
  let current: ChunkRun | null = null;
  for (const c of chunks) {
    if (current && c === current.first + current.count && current.count < maximumChunks) current.count++;
    else {
      current = { first: c, count: 1 };
      runs.push(current);
    }
  }
  return runs;
}

/**
 * Puts the runs in the order of `fronts` reads going on at once, each through its own contiguous share
 * of the bytes: run 1 of each share, then run 2 of each, and so on. A device's regions differ in what
 * they cost (incompressible data is bound by the disk, which must also take its store; text by zstd in
 * the workers); read one after another, each region leaves the disk or the cores idle while it goes.
 */
export function inFronts(runs: ChunkRun[], fronts: number): ChunkRun[] {
  const n = Math.max(1, Math.min(fronts, runs.length));
  if (n === 1) return runs;
  // Share f starts at the first run past f/n of the chunks, and every share gets at least one run.
  const total = runs.reduce((a, r) => a + r.count, 0);
  const starts = [0];
  let seen = runs[0]?.count ?? 0;
  for (let i = 1; i < runs.length && starts.length < n; i++) {
    const due = seen * n >= starts.length * total || runs.length - i <= n - starts.length;
    if (due) starts.push(i);
    seen += (runs[i] as ChunkRun).count;
  }
  const shares = starts.map((s, f) => runs.slice(s, starts[f + 1] ?? runs.length));
  const out: ChunkRun[] = [];
  for (let i = 0; out.length < runs.length; i++) for (const share of shares) if (i < share.length) out.push(share[i] as ChunkRun);
  return out;
}

export interface ReadPlan {
  uri: string;
  size: number;
  chunkSize: number;
  runs: ChunkRun[];
  tls?: NbdTlsOptions;
  /** A buffer to read `length` bytes into (its first `length` bytes are used), or none for a new one. */
  bufferFor?: (length: number) => Buffer | undefined;
  /** Trim each run on the image once read: the snapshot releases what the backup has (--discard-after-read). */
  discardAfterRead?: boolean;
}

/**
 * Reads every run and hands each to `consume` (which may take the buffer for itself); resolves when
 * all are read and consumed. At most connections × requests runs are read ahead of consumption.
 */
export async function readRuns(plan: ReadPlan, consume: (run: ChunkRun, data: Buffer) => Promise<void>): Promise<void> {
  const connections = Math.max(1, Math.min(params.connections, plan.runs.length));
  const clients = await Promise.all(Array.from({ length: connections }, () => NbdClient.connect(plan.uri, plan.tls ? { tls: plan.tls } : {})));
  let next = 0;
  let failure: unknown = null;
  const worker = async (client: NbdClient): Promise<void> => {
    const lane = async (): Promise<void> => {
      while (failure === null && next < plan.runs.length) {
        const run = plan.runs[next++] as ChunkRun;
        const offset = run.first * plan.chunkSize;
        const length = Math.min(run.count * plan.chunkSize, plan.size - offset);
        const data = await client.read(offset, length, plan.bufferFor?.(length));
        if (plan.discardAfterRead) await client.trim(offset, length);
        await consume(run, data);
      }
    };
    await Promise.all(Array.from({ length: params.requestsPerConnection }, () => lane().catch((e: unknown) => {
      failure ??= e;
    })));
  };
  try {
    await Promise.all(clients.map(worker));
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
  if (failure !== null) throw failure;
}

/** Chunks holding any allocated data, by base:allocation (flag 1: hole, 2: zero); the rest read as zeros. */
export async function allocatedChunks(uri: string, size: number, chunkSize: number, tls?: NbdTlsOptions): Promise<number[]> {
  const client = await NbdClient.connect(uri, { metaContexts: ['base:allocation'], ...(tls ? { tls } : {}) });
  try {
    const count = Math.ceil(size / chunkSize);
    if (!client.contexts.has('base:allocation')) return Array.from({ length: count }, (_, i) => i);
    const data = new Uint8Array(count);
    for (const e of await client.extents('base:allocation', 0, size)) {
      if (e.flags & 3) continue; // a hole, or known zeros
      for (let c = Math.floor(e.offset / chunkSize); c * chunkSize < e.offset + e.length; c++) data[c] = 1;
    }
    const out: number[] = [];
    for (let c = 0; c < count; c++) if (data[c]) out.push(c);
    return out;
  } finally {
    await client.close();
  }
}
