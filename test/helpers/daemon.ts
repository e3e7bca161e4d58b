// Owns a blksnapd process for integration tests: temp runtime dir, readiness, CLI calls, cleanup by pid.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, tempDir, type RunResult } from './tools.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const blksnapd = path.join(repoRoot, 'bin/blksnapd');
export const blksnapCli = path.join(repoRoot, 'bin/blksnap');

export class TestDaemon {
  readonly dir: string;
  readonly controlPath: string;
  readonly nbdPath: string;
  readonly child: ChildProcess;
  log = '';
  #removeDir: () => void;

  private constructor(child: ChildProcess, dir: string, removeDir: () => void) {
    this.child = child;
    this.dir = dir;
    this.#removeDir = removeDir;
    this.controlPath = path.join(dir, 'control.sock');
    this.nbdPath = path.join(dir, 'nbd.sock');
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (s: string) => (this.log += s));
  }

  /** Starts a daemon with its sockets and state in a new temp directory; resolves when it is ready. */
  static async start(extraArgs: string[] = []): Promise<TestDaemon> {
    const { dir, remove } = tempDir('blksnapd-');
    return TestDaemon.startIn(dir, remove, extraArgs);
  }

  /** Starts a daemon on a state directory of its own choosing (a restart: the last one's); `remove` runs at stop(). */
  static async startIn(dir: string, remove: () => void, extraArgs: string[] = []): Promise<TestDaemon> {
    // --exit-with-parent: a test runner killed mid-test (a timeout) leaves no daemon, mount or loop device.
    const child = spawn(process.execPath, [blksnapd, '--exit-with-parent', '--control', path.join(dir, 'control.sock'), '--nbd', path.join(dir, 'nbd.sock'), '--state-dir', dir, ...extraArgs], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const daemon = new TestDaemon(child, dir, remove);
    const deadline = Date.now() + 15_000;
    while (!daemon.log.includes('ready:')) {
      if (child.exitCode !== null || Date.now() > deadline) {
        daemon.child.kill('SIGKILL');
        remove();
        throw new Error(`blksnapd did not start: ${daemon.log}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    return daemon;
  }

  uri(name: string): string {
    return `nbd+unix:///${name}?socket=${this.nbdPath}`;
  }

  /** Runs the blksnap CLI against this daemon. */
  cli(...args: string[]): Promise<RunResult> {
    return run(process.execPath, [blksnapCli, ...args], { env: { ...process.env, BLKSNAP_CONTROL: this.controlPath } });
  }

  /** Runs the CLI with --json and parses the document; throws on failure. */
  async json<T = Record<string, unknown>>(...args: string[]): Promise<T> {
    const r = await this.cli(...args, '--json');
    if (r.code !== 0) throw new Error(`blksnap ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  /** SIGKILL, as a crash: the state directory stays for the next start. */
  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGKILL');
    await exited;
  }

  /** SIGTERM, wait for exit (SIGKILL after 10 s), remove the temp directory unless `keep`. Returns the exit code. */
  async stop(options: { keep?: boolean } = {}): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    if (!options.keep) this.#removeDir();
    return this.child.exitCode;
  }

  get isAlive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && fs.existsSync(this.controlPath);
  }
}
