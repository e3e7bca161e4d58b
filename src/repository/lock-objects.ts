// Owns the prune lock where there is no flock (an object store): one object, locks/prune.json, naming
// its holder (host, machine id, pid) and when it last refreshed it. It is created only where there is
// none (a conditional write, If-None-Match: *) and taken over from a holder whose lease ran out only
// where it is still the object that was read (If-Match: its ETag), so two clients never both win.
// The holder refreshes it by the same condition; one that finds it changed has lost it. A server that
// ignores the conditions is caught, mostly, by reading the object back.
import { randomBytes } from 'node:crypto';
import { BlkError } from '../errors.js';
import { backup as params } from '../params.js';
import type { RepositoryLock } from './backend.js';
import { thisHost } from './host.js';
import { isLive } from './sessions.js';

export const PRUNE_LOCK = 'locks/prune.json';

/** The conditional calls an object store offers (S3: If-None-Match and If-Match on PUT). */
export interface ConditionalStore {
  readonly location: string;
  /** Writes an object only where there is none: its ETag, or null when one is there. */
  createIfAbsent(name: string, data: Uint8Array): Promise<string | null>;
  /** Writes an object only where it is still the one with `etag`: the new ETag, or null when it changed. */
  replaceIfMatch(name: string, data: Uint8Array, etag: string): Promise<string | null>;
  /** An object and its ETag, or null when there is none. */
  readTagged(name: string): Promise<{ data: Buffer; etag: string } | null>;
  remove(name: string): Promise<void>;
}

interface LockRecord {
  token: string;
  host: string;
  machineId: string;
  pid: number;
  refreshed: number;
}

function parseLock(data: Buffer): LockRecord | null {
  try {
    const o = JSON.parse(data.toString('utf8')) as LockRecord;
    const valid = typeof o === 'object' && o !== null && typeof o.token === 'string' && typeof o.host === 'string' && typeof o.machineId === 'string' && Number.isSafeInteger(o.pid) && Number.isFinite(o.refreshed);
    return valid ? o : null;
  } catch {
    return null;
  }
}

/** Who holds a lock, for the message of one waiting for it. */
export function describeHolder(r: LockRecord): string {
  return `by pid ${r.pid} on ${r.host}, refreshed ${new Date(r.refreshed).toISOString()}`;
}

/** Takes the prune lock (see above), waiting while a live holder has it. */
export async function lockWithObjects(store: ConditionalStore, onWait?: (holder: string) => void): Promise<RepositoryLock> {
  const me = thisHost();
  const token = randomBytes(12).toString('hex');
  const record = (): Buffer => Buffer.from(JSON.stringify({ token, host: me.name, machineId: me.machineId, pid: process.pid, refreshed: Date.now() } satisfies LockRecord));
  const isMine = async (): Promise<boolean> => {
    const there = await store.readTagged(PRUNE_LOCK);
    return there !== null && parseLock(there.data)?.token === token;
  };
  let etag: string | null = null;
  let told = false;
  for (;;) {
    etag = await store.createIfAbsent(PRUNE_LOCK, record());
    if (etag === null) {
      const there = await store.readTagged(PRUNE_LOCK);
      if (there === null) continue; // released meanwhile
      const holder = parseLock(there.data);
      if (holder === null || !isLive(holder)) etag = await store.replaceIfMatch(PRUNE_LOCK, record(), there.etag);
      else if (!told) {
        onWait?.(describeHolder(holder));
        told = true;
      }
    }
    if (etag !== null && (await isMine())) break;
    await new Promise((r) => setTimeout(r, params.lockRetryMs * (0.5 + Math.random())));
  }
  let lost = false;
  let lastRefreshed = Date.now();
  const refresh = setInterval(() => {
    if (lost || etag === null) return;
    store
      .replaceIfMatch(PRUNE_LOCK, record(), etag)
      .then((next) => {
        if (next === null) lost = true;
        else {
          etag = next;
          lastRefreshed = Date.now();
        }
      })
      .catch(() => undefined);
  }, params.lockRefreshMs);
  refresh.unref();
  let released = false;
  return {
    isLost: () => lost || Date.now() - lastRefreshed > params.lockLeaseMs,
    release: async () => {
      if (released) return;
      released = true;
      clearInterval(refresh);
      if (await isMine().catch(() => false)) await store.remove(PRUNE_LOCK).catch(() => undefined);
    },
  };
}

/** The error of a prune whose lock was taken over: it stops before it deletes anything more. */
export function lockLostError(location: string): BlkError {
  return new BlkError('EIO', `the prune lock of ${location} was taken over (this prune went a lease without refreshing it); it stopped, and the next prune goes on from where it did`);
}
