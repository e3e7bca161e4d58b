// Owns how tests run external tools (qemu-img, qemu-io, nbdinfo, nbdcopy, losetup): with a timeout, output captured.
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isProcessRunning } from '../../src/os/process-alive.js';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion; never throws for a non-zero exit (tests assert on `code`). */
export function run(program: string, args: readonly string[], options: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(program, args, { timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, env: options.env ?? process.env, ...(options.cwd ? { cwd: options.cwd } : {}) }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** Runs a program and returns stdout; throws with its stderr when it fails. */
export async function check(program: string, args: readonly string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<string> {
  const r = await run(program, args, options);
  if (r.code !== 0) throw new Error(`${program} ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A reason to skip a test when a tool is missing, or false when it is there. */
export function missing(...programs: string[]): string | false {
  for (const p of programs) {
    try {
      execFileSync('sh', ['-c', `command -v ${p}`], { stdio: 'ignore' });
    } catch {
      return `${p} is not installed (npm test installs it: scripts/prepare.sh)`;
    }
  }
  return false;
}

/** A tempDir's name: the prefix, then the pid of the test process that made it, then mkdtemp's six characters. */
const OWNED_NAME = /-pid(\d+)-[A-Za-z0-9]{6}$/;
let isSwept = false;

/**
 * A fresh temporary directory, removed by the returned function. A test process killed before its
 * clean-up leaves its directories behind; the first tempDir of a later test process removes those.
 */
export function tempDir(prefix = 'blksnap-test-'): { dir: string; remove: () => void } {
  if (!isSwept) {
    isSwept = true;
    removeOrphanedTempDirs(os.tmpdir());
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix.replace(/-$/, '')}-pid${process.pid}-`));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Removes the directories under `parent` that a tempDir of a process no longer running made, unless
 * something is still mounted under one (a removal would reach into that filesystem); their paths.
 */
export function removeOrphanedTempDirs(parent: string): string[] {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '');
  const removed: string[] = [];
  for (const name of fs.readdirSync(parent)) {
    const dir = path.join(parent, name);
    const owner = Number(OWNED_NAME.exec(name)?.[1] ?? 0);
    if (!(owner > 0) || isProcessRunning(owner) || mounts.some((m) => m === dir || m.startsWith(`${dir}/`))) continue;
    try {
      if (!fs.lstatSync(dir).isDirectory()) continue;
      fs.rmSync(dir, { recursive: true, force: true });
      removed.push(dir);
    } catch {
      // Left for a later run: a busy file, or a filesystem gone read-only.
    }
  }
  return removed;
}

/** A sparse file of the given size. */
export function sparseFile(file: string, size: number): string {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

/** Binds a loop device to a file; the caller must call the returned detach. */
export async function loopDevice(file: string): Promise<{ device: string; detach: () => Promise<void> }> {
  const device = (await check('losetup', ['-f', '--show', file])).trim();
  return { device, detach: async () => void (await run('losetup', ['-d', device])) };
}
