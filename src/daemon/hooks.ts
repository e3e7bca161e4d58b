// Owns the application-consistency hooks of a take: the executables of the hooks directory (as
// qemu-guest-agent's fsfreeze hooks) run in name order with `freeze` before the filesystems are
// frozen, and in reverse order with `thaw` after the take and the filesystems' thaw. A freeze hook
// that fails or runs past the timeout aborts the take, and the hooks already frozen are thawed; a
// thaw hook's failure is logged and never stops the others. Hooks run in the daemon, so a client
// killed mid-take changes nothing: every frozen hook is thawed.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkError } from '../errors.js';

export interface HookContext {
  snapshotId: string;
  /** The snapshot's devices: names, and their /dev/loopN where they have one. */
  devices: string[];
  blockDevices: string[];
}

/** What a hook's environment says of the take. */
function environment(c: HookContext, phase: 'freeze' | 'thaw'): NodeJS.ProcessEnv {
  return { ...process.env, BLKSNAP_HOOK: phase, BLKSNAP_SNAPSHOT_ID: c.snapshotId, BLKSNAP_DEVICES: c.devices.join(' '), BLKSNAP_BLOCK_DEVICES: c.blockDevices.join(' ') };
}

/** The last lines of what a hook wrote, for a message. */
function tail(text: string): string {
  const t = text.trim().split('\n').slice(-3).join(' | ');
  return t.length > 400 ? `…${t.slice(-400)}` : t;
}

export class Hooks {
  readonly dir: string;
  readonly timeoutMs: number;
  #log: (line: string) => void;

  constructor(dir: string, timeoutMs: number, log: (line: string) => void) {
    this.dir = dir;
    this.timeoutMs = timeoutMs;
    this.#log = log;
  }

  /** The hooks: regular executable files, not hidden, not a package manager's leftovers, in name order. */
  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await fs.promises.readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new BlkError('EIO', `hooks directory ${this.dir}: ${(e as Error).message}`);
    }
    const hooks: string[] = [];
    for (const name of names.sort()) {
      if (name.startsWith('.') || /~$|\.dpkg-(old|new|dist|tmp)$|\.rpm(new|save|orig)$/.test(name)) continue;
      const file = path.join(this.dir, name);
      const st = await fs.promises.stat(file).catch(() => null);
      if (st?.isFile() && (st.mode & 0o111) !== 0) hooks.push(file);
    }
    return hooks;
  }

  #run(file: string, phase: 'freeze' | 'thaw', c: HookContext): Promise<void> {
    return new Promise((resolve, reject) => {
      execFile(file, [phase], { env: environment(c, phase), timeout: this.timeoutMs, killSignal: 'SIGKILL', maxBuffer: 1024 * 1024 }, (error, stdout, stderr) => {
        if (!error) return resolve();
        const e = error as NodeJS.ErrnoException & { killed?: boolean; code?: number | string; signal?: string };
        const why = e.killed ? `did not finish within ${this.timeoutMs / 1000} s (killed)` : typeof e.code === 'number' ? `exited ${e.code}` : e.signal ? `was killed by ${e.signal}` : `could not run (${e.code ?? e.message})`;
        reject(new BlkError(e.killed ? 'ETIMEDOUT' : 'ECANCELED', `${phase} hook ${path.basename(file)} ${why}${tail(`${stdout}\n${stderr}`) ? `: ${tail(`${stdout}\n${stderr}`)}` : ''}`));
      });
    });
  }

  /**
   * Runs every hook with `freeze`, in name order; the hooks frozen, for thaw(). When one fails, those
   * frozen before it are thawed and the error says which failed and how (the take must not go on).
   */
  async freeze(c: HookContext): Promise<string[]> {
    const frozen: string[] = [];
    for (const file of await this.list()) {
      try {
        await this.#run(file, 'freeze', c);
        frozen.push(file);
      } catch (e) {
        await this.thaw(frozen, c);
        const err = e as BlkError;
        throw new BlkError(err.code, `snapshot ${c.snapshotId} not taken: ${err.message}${frozen.length ? `; ${frozen.map((f) => path.basename(f)).join(', ')} thawed` : ''}`);
      }
    }
    if (frozen.length) this.#log(`snapshot ${c.snapshotId}: hooks frozen: ${frozen.map((f) => path.basename(f)).join(', ')}`);
    return frozen;
  }

  /** Runs `thaw` for the hooks frozen, in reverse order; a failure is logged, and the others still run. */
  async thaw(frozen: string[], c: HookContext): Promise<void> {
    for (const file of [...frozen].reverse()) {
      await this.#run(file, 'thaw', c).catch((e: unknown) => this.#log(`snapshot ${c.snapshotId}: ${(e as Error).message}`));
    }
  }
}
