// Owns the repository lock where there is no flock (an object store): each holder writes a lock
// object locks/ID.json naming its host, pid, kind and a lease time it refreshes; a holder that stops
// refreshing loses its lock when the lease runs out, and one on this host whose process is gone loses
// it at once. To take the lock a client writes its object, then lists: a conflicting live lock (an
// exclusive one, or any other when it wants exclusive) makes it take its own away, wait and try again
// after a random pause, so two clients that raced both back off and one of them wins the next round.
import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import type { BlkError } from '../errors.js';
import { isProcessRunning } from '../os/process-alive.js';
import { backup as params } from '../params.js';
import type { Backend } from './backend.js';

const LOCKS = 'locks/';

interface LockObject {
  exclusive: boolean;
  host: string;
  pid: number;
  /** When the holder last refreshed it (ms since the epoch). */
  refreshed: number;
}

function isLockObject(v: unknown): v is LockObject {
  const o = v as LockObject;
  return typeof o === 'object' && o !== null && typeof o.exclusive === 'boolean' && typeof o.host === 'string' && Number.isSafeInteger(o.pid) && Number.isFinite(o.refreshed);
}

/** Whether a lock still binds: refreshed within the lease (by the clock of whoever reads it), its process alive where this host can tell. */
function isLive(lock: LockObject, now: number): boolean {
  if (now - lock.refreshed > params.lockLeaseMs) return false;
  return lock.host !== os.hostname() || isProcessRunning(lock.pid);
}

async function readLocks(backend: Backend, except: string): Promise<Array<{ name: string; lock: LockObject | null }>> {
  const names = (await backend.list(LOCKS)).filter((n) => n.endsWith('.json') && n !== except);
  return Promise.all(
    names.map(async (name) => {
      try {
        const lock: unknown = JSON.parse((await backend.read(`${LOCKS}${name}`)).toString('utf8'));
        return { name, lock: isLockObject(lock) ? lock : null };
      } catch (e) {
        // Gone between the listing and the read: released meanwhile.
        if ((e as BlkError).code === 'ENOENT') return { name, lock: null };
        throw e;
      }
    }),
  );
}

/** A live lock other than `mine` that one wanting the lock (`exclusive` or shared) must wait for, or null. */
async function conflicting(backend: Backend, mine: string, exclusive: boolean): Promise<LockObject | null> {
  const now = Date.now();
  for (const { lock } of await readLocks(backend, mine)) if (lock && (exclusive || lock.exclusive) && isLive(lock, now)) return lock;
  return null;
}

/** Takes the lock by lock objects (see above); the release removes this client's object. */
export async function lockWithObjects(backend: Backend, exclusive: boolean, onWait?: (holder: string) => void): Promise<() => Promise<void>> {
  const name = `${randomBytes(8).toString('hex')}.json`;
  const mine = (): LockObject => ({ exclusive, host: os.hostname(), pid: process.pid, refreshed: Date.now() });
  let told = false;
  for (;;) {
    let holder = await conflicting(backend, name, exclusive);
    if (!holder) {
      await backend.write(`${LOCKS}${name}`, Buffer.from(JSON.stringify(mine())));
      holder = await conflicting(backend, name, exclusive);
      if (!holder) break;
      await backend.remove(`${LOCKS}${name}`);
    }
    if (!told) onWait?.(`held ${holder.exclusive ? 'exclusively ' : ''}by pid ${holder.pid} on ${holder.host}, refreshed ${new Date(holder.refreshed).toISOString()}`);
    told = true;
    await new Promise((r) => setTimeout(r, params.lockRetryMs * (0.5 + Math.random())));
  }
  let stopped = false;
  const refresh = setInterval(() => {
    backend.write(`${LOCKS}${name}`, Buffer.from(JSON.stringify(mine()))).catch(() => undefined);
  }, params.lockRefreshMs);
  refresh.unref();
  return async () => {
    if (stopped) return;
    stopped = true;
    clearInterval(refresh);
    await backend.remove(`${LOCKS}${name}`).catch(() => undefined);
  };
}
