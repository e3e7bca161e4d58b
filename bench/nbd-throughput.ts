// Benchmark: blksnapd vs qemu-nbd vs nbdkit serving the same sparse raw file, driven identically by fio's nbd engine.
// Prints MB/s, IOPS and blksnapd's ratio to the faster peer (medians of several rounds, servers alternated),
// then the cost of CBT tracking (durable: write-intent record and saves): a tracked and an untracked disk
// in one daemon, written back to back in pairs (median of the pairs' costs), both right after attach
// (first touches, with fio's completion-latency percentiles) and as the profiles run; the metadata
// writes under random writes over the whole device; and the CPU time of the CBT marking itself.
//   node dist/bench/nbd-throughput.js            (or: npm run bench)
//   BENCH_ROUNDS=3 BENCH_RUNTIME=4 BENCH_PROFILES=seq-read-qd32,rand-read-4k-qd32 BENCH_DAEMON_ARGS='--sync-write-max 0'
//   BENCH_TRACKING_PAIRS=8 (a multiple of 4 balances order and files; 0 skips the tracking part); BENCH_ROUNDS=0: the tracking part alone
//   BENCH_TRACKING_CONTROL=1: an A/A control, both disks untracked: what the pairs show without any cost
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CbtMap } from '../src/cbt/cbt-map.js';
import { readIntent } from '../src/cbt/intent-files.js';
import { daemonArgs, fioMegabytesPerSecond, fioWriteLatency, median, root, runTool, spawnBlksnapd, stopChild, waitFor } from './common.js';

const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const runtime = Number(process.env.BENCH_RUNTIME ?? 4);
const trackingPairs = Number(process.env.BENCH_TRACKING_PAIRS ?? 8);
const isTrackingControl = process.env.BENCH_TRACKING_CONTROL === '1';
const GiB = 1024 ** 3;

interface Profile { name: string; rw: string; bs: string; iodepth: number; numjobs: number }
const allProfiles: Profile[] = [
  { name: 'seq-write-qd1', rw: 'write', bs: '1m', iodepth: 1, numjobs: 1 },
  { name: 'seq-write-qd32', rw: 'write', bs: '1m', iodepth: 32, numjobs: 1 },
  { name: 'seq-read-qd1', rw: 'read', bs: '1m', iodepth: 1, numjobs: 1 },
  { name: 'seq-read-qd32', rw: 'read', bs: '1m', iodepth: 32, numjobs: 1 },
  { name: 'rand-read-4k-qd1', rw: 'randread', bs: '4k', iodepth: 1, numjobs: 1 },
  { name: 'rand-read-4k-qd32', rw: 'randread', bs: '4k', iodepth: 32, numjobs: 1 },
  // Four clients one request at a time each: a busy-poll spin for one must not hold the others back.
  { name: 'rand-read-4k-4jobs-qd1', rw: 'randread', bs: '4k', iodepth: 1, numjobs: 4 },
  { name: 'rand-write-4k-qd1', rw: 'randwrite', bs: '4k', iodepth: 1, numjobs: 1 },
  { name: 'rand-write-4k-qd32', rw: 'randwrite', bs: '4k', iodepth: 32, numjobs: 1 },
  { name: 'rand-rw-4k-2jobs-qd16', rw: 'randrw', bs: '4k', iodepth: 16, numjobs: 2 },
];
const wanted = process.env.BENCH_PROFILES?.split(',');
const profiles = wanted ? allProfiles.filter((p) => wanted.includes(p.name)) : allProfiles;

interface Server { name: string; start(dir: string, file: string): Promise<{ uri: string; stop: () => Promise<void> }> }

/** Starts blksnapd with the given files attached (name → file, tracked or not); returns the NBD socket. */
async function startBlksnapd(dir: string, disks: Array<{ name: string; file: string; tracked: boolean }>): Promise<{ nbd: string; stop: () => Promise<void> }> {
  const { control, nbd, stop } = await spawnBlksnapd(dir);
  for (const d of disks) {
    await runTool(process.execPath, [path.join(root, 'bin/blksnap'), 'attach', '--control', control, '--device', d.file, '--name', d.name, ...(d.tracked ? [] : ['--untracked'])]);
  }
  return { nbd, stop };
}

const blksnapd: Server = {
  name: 'blksnapd',
  async start(dir, file) {
    const s = await startBlksnapd(dir, [{ name: 'disk', file, tracked: true }]);
    return { uri: `nbd+unix:///disk?socket=${s.nbd}`, stop: s.stop };
  },
};

const qemuNbd: Server = {
  name: 'qemu-nbd',
  async start(dir, file) {
    const sock = path.join(dir, 'qemu.sock');
    const child = spawn('qemu-nbd', ['-f', 'raw', '-t', '-e', '0', '--cache=writeback', '-k', sock, file], { stdio: 'ignore' });
    await waitFor(() => fs.existsSync(sock), 'qemu-nbd', child);
    return { uri: `nbd+unix:///?socket=${sock}`, stop: () => stopChild(child) };
  },
};

const nbdkit: Server = {
  name: 'nbdkit',
  async start(dir, file) {
    const sock = path.join(dir, 'nbdkit.sock');
    const child = spawn('nbdkit', ['-f', '-U', sock, 'file', `file=${file}`], { stdio: 'ignore' });
    await waitFor(() => fs.existsSync(sock), 'nbdkit', child);
    return { uri: `nbd+unix:///?socket=${sock}`, stop: () => stopChild(child) };
  },
};

interface Result { mbps: number; iops: number; latency?: { p99: number; p999: number; max: number } }

/** `fresh`: no ramp time, so the first writes into each region (the write-intent's first touches) count. */
async function fio(uri: string, p: Profile, options: { size?: string; fresh?: boolean; seconds?: number } = {}): Promise<Result> {
  const out = await runTool('fio', [
    '--name=bench', '--ioengine=nbd', `--uri=${uri}`, `--rw=${p.rw}`, `--bs=${p.bs}`, `--iodepth=${p.iodepth}`,
    `--numjobs=${p.numjobs}`, `--size=${options.size ?? '1g'}`, '--time_based', `--runtime=${options.seconds ?? runtime}`, `--ramp_time=${options.fresh ? 0 : 1}`, '--group_reporting',
    '--randrepeat=0', '--output-format=json',
  ]);
  return { ...fioMegabytesPerSecond(out), ...(p.rw.includes('write') || p.rw === 'randrw' ? { latency: fioWriteLatency(out) } : {}) };
}


/** A 4 GiB sparse file whose first GiB (where fio works) holds data, so reads come from the page cache. */
function makeDisk(file: string): void {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 4 * GiB);
  const fd = fs.openSync(file, 'r+');
  const block = Buffer.alloc(1024 * 1024, 0x5a);
  for (let i = 0; i < 1024; i++) fs.writeSync(fd, block, 0, block.length, i * block.length);
  fs.closeSync(fd);
}

/**
 * Tracking cost, measured so that the machine's drift between minutes cancels: one daemon serves
 * a tracked and an untracked disk, and each pair of runs writes one, then the other, back to back.
 * Two fresh, equal files take turns being the tracked one, and the order within a pair alternates,
 * so neither a file's state nor going first favours one side. The cost is the median over pairs of
 * 1 − tracked/untracked.
 */
async function trackingCost(dir: string, writeProfiles: Profile[]): Promise<void> {
  const files = [path.join(dir, 'track-a.raw'), path.join(dir, 'track-b.raw')] as const;
  for (const f of files) makeDisk(f);
  const kind = isTrackingControl ? 'A/A CONTROL: the "tracked" disk is untracked too' : 'tracked vs untracked disk in one daemon';
  console.log(`\n# tracking cost: ${trackingPairs} back-to-back pairs per profile, ${kind}`);
  console.log(`${'profile'.padEnd(24)}${'tracked'.padEnd(14)}${'untracked'.padEnd(14)}median cost  pairs' costs`);
  const rates: Array<{ profile: Profile; iops: number }> = [];
  for (const p of writeProfiles) {
    const costs: number[] = [];
    const freshCosts: number[] = [];
    const tracked: number[] = [];
    const untracked: number[] = [];
    const latencies: Record<'tracked' | 'untracked', Array<{ p99: number; p999: number; max: number }>> = { tracked: [], untracked: [] };
    for (let i = 0; i < trackingPairs; i++) {
      // Order flips every pair, roles every two pairs: with a multiple of 4 pairs both balance
      // (a second run in a pair tends to be quicker here, which a fixed order would count as cost).
      const [trackedFile, plainFile] = (i >> 1) % 2 ? [files[1], files[0]] : [files[0], files[1]];
      const sdir = fs.mkdtempSync(path.join(dir, 'tracking-'));
      const s = await startBlksnapd(sdir, [{ name: 'tracked', file: trackedFile, tracked: !isTrackingControl }, { name: 'untracked', file: plainFile, tracked: false }]);
      const r: Record<string, Result> = {};
      const first: Record<string, Result> = {};
      try {
        for (const name of i % 2 ? ['untracked', 'tracked'] : ['tracked', 'untracked']) {
          const uri = `nbd+unix:///${name}?socket=${s.nbd}`;
          // Just attached: every region's first write waits for its write-intent record (2 s, no ramp).
          first[name] = await fio(uri, p, { fresh: true, seconds: 2 });
          const latency = first[name]?.latency;
          if (latency) latencies[name as 'tracked' | 'untracked'].push(latency);
          // Then as the NBD benchmark runs its profiles: the steady cost.
          r[name] = await fio(uri, p);
        }
      } finally {
        await s.stop();
      }
      const t = (r.tracked as Result).mbps;
      const u = (r.untracked as Result).mbps;
      tracked.push(t);
      untracked.push(u);
      costs.push(1 - t / u);
      freshCosts.push(1 - (first.tracked as Result).mbps / (first.untracked as Result).mbps);
    }
    const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
    console.log(`${p.name.padEnd(24)}${`${median(tracked).toFixed(0)} MB/s`.padEnd(14)}${`${median(untracked).toFixed(0)} MB/s`.padEnd(14)}${pct(median(costs)).padEnd(13)}${costs.map(pct).join(' ')}`);
    const lat = (side: 'tracked' | 'untracked', key: 'p99' | 'p999' | 'max'): string => `${median(latencies[side].map((l) => l[key])).toFixed(0)}`;
    console.log(`${''.padEnd(24)}the first 2 s after attach (first touches): median cost ${pct(median(freshCosts))}; write clat µs p99 ${lat('tracked', 'p99')} vs ${lat('untracked', 'p99')}, p99.9 ${lat('tracked', 'p999')} vs ${lat('untracked', 'p999')}, max ${lat('tracked', 'max')} vs ${lat('untracked', 'max')}`);
    rates.push({ profile: p, iops: (median(tracked) * 1e6) / sizeOf(p.bs) });
  }
  await metadataWrites(dir, files[0]);
  // What tracking adds to a write is CbtMap.mark(). Its CPU time against the daemon time each
  // request has at the measured rate (1 / IOPS) bounds the cost from above, without the noise.
  const map = new CbtMap(4 * GiB);
  console.log('\n# CBT marking CPU time per write (CbtMap.mark, in-process), as a share of 1/IOPS at the tracked rate');
  for (const { profile, iops } of rates) {
    const length = sizeOf(profile.bs);
    const calls = 1_000_000;
    const started = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) map.mark((i * 7919 % 4096) * 256 * 1024, length);
    const ns = Number(process.hrtime.bigint() - started) / calls;
    const requestNs = 1e9 / iops;
    console.log(`${profile.name.padEnd(24)}${ns.toFixed(0).padStart(5)} ns per mark, ${(requestNs / 1000).toFixed(1)} µs per request: ${((ns / requestNs) * 100).toFixed(3)}%`);
  }
}

/**
 * The metadata durable tracking writes under 4 KiB random writes over the whole device: write-intent
 * record writes (the record's sequence number) and tracker state saves (each a new state file,
 * watched by its inode), per second of the run.
 */
async function metadataWrites(dir: string, file: string): Promise<void> {
  const sdir = fs.mkdtempSync(path.join(dir, 'metadata-'));
  const s = await startBlksnapd(sdir, [{ name: 'tracked', file, tracked: true }]);
  const stateFile = path.join(sdir, 'cbt', 'tracked.state');
  const inodes = new Set<number>();
  const watch = setInterval(() => {
    try {
      inodes.add(fs.statSync(stateFile).ino);
    } catch {}
  }, 50);
  const before = await readIntent(path.join(sdir, 'cbt'), 'tracked');
  const started = Date.now();
  const p: Profile = { name: 'rand-write-4k-qd32', rw: 'randwrite', bs: '4k', iodepth: 32, numjobs: 1 };
  let r: Result;
  try {
    // Long enough for several saves (every 5 s): each shrinks the record, so first touches recur.
    r = await fio(`nbd+unix:///tracked?socket=${s.nbd}`, p, { size: '4g', fresh: true, seconds: Math.max(runtime, 16) });
  } finally {
    clearInterval(watch);
    await s.stop();
  }
  const seconds = (Date.now() - started) / 1000;
  const after = await readIntent(path.join(sdir, 'cbt'), 'tracked');
  const sequence = (x: typeof after): number => (x !== null && 'sequence' in x ? x.sequence : 0);
  const recordWrites = sequence(after) - sequence(before); // the attach's own record write is in `before`
  console.log(`\n# metadata under rand-write-4k-qd32 over the whole 4 GiB device (${seconds.toFixed(1)} s, ${r.iops.toFixed(0)} IOPS, 4 MiB regions, 5 s saves)`);
  console.log(`write-intent record writes: ${recordWrites} (${(recordWrites / seconds).toFixed(1)}/s); tracker state saves: ${inodes.size - 1} (${((inodes.size - 1) / seconds).toFixed(2)}/s)`);
}

function sizeOf(bs: string): number {
  return bs.endsWith('m') ? Number(bs.slice(0, -1)) * 1024 * 1024 : Number(bs.slice(0, -1)) * 1024;
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blksnap-bench-'));
  const file = path.join(dir, 'disk.raw');
  makeDisk(file);

  const servers = [blksnapd, qemuNbd, nbdkit];
  const samples = new Map<string, Result[]>();
  console.log(`# ${rounds} rounds × ${runtime}s per profile, ${os.cpus().length} cores, file 4 GiB sparse (1 GiB used), blksnapd ${daemonArgs.join(' ') || '(defaults)'}`);
  try {
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 ? [...servers].reverse() : servers;
      for (const server of order) {
        const sdir = fs.mkdtempSync(path.join(dir, `${server.name}-`));
        const s = await server.start(sdir, file);
        try {
          for (const p of profiles) {
            const r = await fio(s.uri, p);
            const key = `${server.name}|${p.name}`;
            samples.set(key, [...(samples.get(key) ?? []), r]);
            process.stderr.write(`round ${round + 1} ${server.name.padEnd(18)} ${p.name.padEnd(22)} ${r.mbps.toFixed(0).padStart(6)} MB/s ${r.iops.toFixed(0).padStart(7)} IOPS\n`);
          }
        } finally {
          await s.stop();
        }
      }
    }
    if (rounds > 0) printTable(samples);
    const writeProfiles = profiles.filter((p) => p.rw.includes('write') || p.rw === 'randrw');
    if (trackingPairs > 0 && writeProfiles.length > 0) await trackingCost(dir, writeProfiles);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function printTable(samples: Map<string, Result[]>): void {
  const med = (server: string, profile: string): Result => {
    const xs = samples.get(`${server}|${profile}`) ?? [];
    return { mbps: median(xs.map((x) => x.mbps)), iops: median(xs.map((x) => x.iops)) };
  };
  const fmt = (r: Result): string => `${r.mbps.toFixed(0).padStart(6)} MB/s ${(r.iops / 1000).toFixed(1).padStart(6)}k`;
  console.log(`\n${'profile'.padEnd(24)}${'blksnapd'.padEnd(22)}${'qemu-nbd'.padEnd(22)}${'nbdkit'.padEnd(22)}ratio to the faster peer`);
  for (const p of profiles) {
    const b = med('blksnapd', p.name);
    const q = med('qemu-nbd', p.name);
    const k = med('nbdkit', p.name);
    const peer = Math.max(q.mbps, k.mbps);
    console.log(`${p.name.padEnd(24)}${fmt(b).padEnd(22)}${fmt(q).padEnd(22)}${fmt(k).padEnd(22)}${(b.mbps / peer).toFixed(2)}×`);
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
