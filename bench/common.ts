// Owns what the benchmarks share: starting blksnapd and other servers, running a tool for its output, and medians.
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package's root (benches run from dist/bench). */
export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** More blksnapd options from BENCH_DAEMON_ARGS, for A/B runs ('--cow-copy cached', '--sync-write-max 0'). */
export const daemonArgs = (process.env.BENCH_DAEMON_ARGS ?? '').split(' ').filter((a) => a !== '');

// A reader that stops early (`| head`) must not leave daemons, loop devices and files behind: what
// is printed to the closed pipe is dropped, and the bench runs on to its own clean-up.
process.stdout.on('error', () => undefined);

/** Runs a program and resolves with its stdout; rejects with its stderr when it fails. */
export function runTool(program: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${program} failed: ${err}`))));
  });
}

/** Resolves once `check` holds; rejects when `child` exits first or 15 s pass. */
export function waitFor(check: () => boolean, what: string, child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 15_000;
    const poll = (): void => {
      if (check()) return resolve();
      if (child.exitCode !== null || Date.now() > deadline) return reject(new Error(`${what} did not start`));
      setTimeout(poll, 20);
    };
    poll();
  });
}

/** SIGTERM to a server the bench started (by its pid); resolves once it has exited. */
export function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

export interface BenchDaemon {
  child: ChildProcess;
  control: string;
  nbd: string;
  stop: () => Promise<void>;
}

/**
 * Starts blksnapd with its sockets in `dir` (names ending in `tag`), its state in `stateDir`
 * (default `dir`), `args` and then BENCH_DAEMON_ARGS; resolves once its control socket is there.
 */
export async function spawnBlksnapd(dir: string, options: { args?: string[]; stateDir?: string; tag?: string } = {}): Promise<BenchDaemon> {
  const control = path.join(dir, `control${options.tag ?? ''}.sock`);
  const nbd = path.join(dir, `nbd${options.tag ?? ''}.sock`);
  // --exit-with-parent: a bench stopped half-way (Ctrl-C, a killed terminal) leaves no daemon behind.
  const child = spawn(process.execPath, [path.join(root, 'bin/blksnapd'), '--exit-with-parent', '--control', control, '--nbd', nbd, '--state-dir', options.stateDir ?? dir, ...(options.args ?? []), ...daemonArgs], { stdio: 'ignore' });
  await waitFor(() => fs.existsSync(control), 'blksnapd', child);
  return { child, control, nbd, stop: () => stopChild(child) };
}

/** Bytes per second (read + write) of fio's first job, from its JSON output, in MB/s. */
export function fioMegabytesPerSecond(out: string): { mbps: number; iops: number } {
  const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { bw_bytes: number; iops: number }>> }).jobs[0];
  if (!job) throw new Error('fio printed no job');
  return { mbps: (job.read.bw_bytes + job.write.bw_bytes) / 1e6, iops: job.read.iops + job.write.iops };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
}

/** Write completion latency of fio's first job, from its JSON output, in microseconds. */
export function fioWriteLatency(out: string): { p99: number; p999: number; max: number } {
  type Clat = { percentile?: Record<string, number>; max: number };
  const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ write: { clat_ns: Clat } }> }).jobs[0];
  if (!job) throw new Error('fio printed no job');
  const clat = job.write.clat_ns;
  return { p99: (clat.percentile?.['99.000000'] ?? 0) / 1000, p999: (clat.percentile?.['99.900000'] ?? 0) / 1000, max: clat.max / 1000 };
}

/** The machine's CPU time so far (/proc/stat's first line, in clock ticks): all of it, and what the host stole. */
export function cpuTicks(): { total: number; steal: number } {
  const fields = (fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1, 9).map(Number);
  return { total: fields.reduce((a, b) => a + b, 0), steal: fields[7] ?? 0 };
}

/** The share of the machine's CPU time the host took between two cpuTicks() (a VM's neighbours: it moves wall times). */
export function stealBetween(before: { total: number; steal: number }, after: { total: number; steal: number }): number {
  const total = after.total - before.total;
  return total > 0 ? (after.steal - before.steal) / total : 0;
}
