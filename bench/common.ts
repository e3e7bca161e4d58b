// Owns what the benchmarks share: running a tool for its output, and medians.
import { spawn } from 'node:child_process';

// A reader that stops early (`| head`) must not leave daemons, loop devices and files behind: what
// is printed to the closed pipe is dropped, and the bench runs on to its own clean-up.
process.stdout.on('error', () => undefined);

/** Runs a program and resolves with its stdout; rejects with its stderr when it fails. */
export function runTool(program: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${program} failed: ${err}`))));
  });
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
