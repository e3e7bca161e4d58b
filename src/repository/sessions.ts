// Owns sessions: every client working on a repository (a backup being made, a restore, a verify, a
// backup served as a device) keeps an object sessions/ID.json naming its host, pid and what it does,
// refreshed while it works. Writers take no lock: a prune's marks record the sessions live when they
// were made, and nothing marked is deleted while one of those lives (repository/pending-deletion.ts).
// A session counts as live while refreshed within the lease and a clock margin (hosts' clocks differ),
// and on this host only while its process runs.
import { randomBytes } from 'node:crypto';
import { BlkError } from '../errors.js';
import { isProcessRunning } from '../os/process-alive.js';
import { backup as params } from '../params.js';
import type { Backend } from './backend.js';
import { isMissing } from './backend.js';
import { thisHost } from './host.js';

const SESSIONS = 'sessions/';

export type SessionKind = 'backup' | 'restore' | 'verify' | 'attach' | 'copy';

export interface SessionRecord {
  id: string;
  kind: SessionKind;
  /** The host's name and machine id (not --host: two hosts may share a name, never a machine). */
  host: string;
  machineId: string;
  pid: number;
  /** When it began and was last refreshed (ms since the epoch, by its host's clock). */
  started: number;
  refreshed: number;
  /** The backup it serves (attach) or reads: a prune keeps that backup while the session lives. */
  backup?: string;
}

function isSessionRecord(v: unknown): v is SessionRecord {
  const o = v as SessionRecord;
  return typeof o === 'object' && o !== null && typeof o.id === 'string' && typeof o.kind === 'string' && typeof o.host === 'string' && typeof o.machineId === 'string' && Number.isSafeInteger(o.pid) && Number.isFinite(o.started) && Number.isFinite(o.refreshed) && (o.backup === undefined || typeof o.backup === 'string');
}

/** Whether a session record is of this machine. */
function isThisMachine(r: { host: string; machineId: string }): boolean {
  const me = thisHost();
  return me.machineId !== '' ? r.machineId === me.machineId : r.host === me.name;
}

/** Whether a session or a lock still binds (see the top of this file). */
export function isLive(r: { host: string; machineId: string; pid: number; refreshed: number }, now = Date.now()): boolean {
  if (now - r.refreshed > params.lockLeaseMs + params.clockMarginMs) return false;
  return !isThisMachine(r) || isProcessRunning(r.pid);
}

/** Every session object that can be read: live and dead ones (a dead one is left by a process killed). */
export async function readSessions(backend: Backend): Promise<SessionRecord[]> {
  const names = (await backend.list(SESSIONS)).filter((n) => n.endsWith('.json'));
  const records = await Promise.all(
    names.map(async (name) => {
      try {
        const r: unknown = JSON.parse((await backend.read(`${SESSIONS}${name}`)).toString('utf8'));
        return isSessionRecord(r) && `${r.id}.json` === name ? r : null;
      } catch (e) {
        // Gone between the listing and the read (ended meanwhile), or not ours to read: no session.
        if (isMissing(e) || e instanceof SyntaxError) return null;
        throw e;
      }
    }),
  );
  return records.filter((r): r is SessionRecord => r !== null);
}

/** The sessions live now. */
export async function liveSessions(backend: Backend): Promise<SessionRecord[]> {
  const now = Date.now();
  return (await readSessions(backend)).filter((r) => isLive(r, now));
}

/** Removes session objects whose holders are gone (a prune tidies them). */
export async function removeDeadSessions(backend: Backend): Promise<number> {
  const now = Date.now();
  let removed = 0;
  for (const r of await readSessions(backend)) {
    if (isLive(r, now)) continue;
    await backend.remove(`${SESSIONS}${r.id}.json`);
    removed++;
  }
  return removed;
}

/** A session of this process (see above): refreshed until closed. */
export class Session {
  readonly record: SessionRecord;
  #backend: Backend;
  #timer: NodeJS.Timeout;
  #lastRefreshed: number;
  /** The longest time between two refreshes that reached the store. */
  #longestGap = 0;
  #closed = false;

  private constructor(backend: Backend, record: SessionRecord) {
    this.#backend = backend;
    this.record = record;
    this.#lastRefreshed = record.refreshed;
    this.#timer = setInterval(() => void this.#refresh(), params.lockRefreshMs);
    this.#timer.unref();
  }

  /** Begins a session: its object is in the store before this returns (and before the caller reads anything). */
  static async open(backend: Backend, kind: SessionKind, backup?: string): Promise<Session> {
    const me = thisHost();
    const now = Date.now();
    const record: SessionRecord = { id: randomBytes(8).toString('hex'), kind, host: me.name, machineId: me.machineId, pid: process.pid, started: now, refreshed: now, ...(backup ? { backup } : {}) };
    await backend.write(`${SESSIONS}${record.id}.json`, Buffer.from(JSON.stringify(record)));
    await backend.sync();
    return new Session(backend, record);
  }

  async #refresh(): Promise<void> {
    if (this.#closed) return;
    const now = Date.now();
    try {
      await this.#backend.write(`${SESSIONS}${this.record.id}.json`, Buffer.from(JSON.stringify({ ...this.record, refreshed: now })));
      this.#longestGap = Math.max(this.#longestGap, now - this.#lastRefreshed);
      this.#lastRefreshed = now;
    } catch {
      // The next one tries again; assertAlive() tells whether a prune may have taken it for dead.
    }
  }

  /**
   * EIO when the session went unrefreshed long enough that a prune may have taken it for dead (and
   * deleted what it marked): a backup must not commit on chunks that may be gone.
   */
  assertAlive(): void {
    const gap = Math.max(this.#longestGap, Date.now() - this.#lastRefreshed);
    if (gap > params.lockLeaseMs) throw new BlkError('EIO', `this client's session in ${this.#backend.location} went ${Math.round(gap / 1000)} s without a refresh (the lease is ${params.lockLeaseMs / 1000} s): a prune may have taken it for dead, so nothing is committed; run it again`);
  }

  /** Ends the session. A store that refuses the removal (append-only credentials) keeps a session that expires. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#backend.remove(`${SESSIONS}${this.record.id}.json`).catch(() => undefined);
  }
}
