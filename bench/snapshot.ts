// Benchmark: copy-on-write and snapshot costs.
//  - COW first-write throughput: sequential 1 MiB writes into fresh chunks with a snapshot held, vs passthrough
//    overwriting cached pages, and vs passthrough into never-written ranges (which, like the difference
//    storage's copies, need new page-cache pages: on a VM that gives free memory back to the host,
//    each new page costs a host fault, docs/performance.md)
//  - image reads vs device reads (untouched chunks come from the device, kept ones from the difference storage)
//  - take latency with 4 sparse devices of 1 TiB
//  - daemon RSS with a 4 TiB sparse device and a snapshot held; metadata bytes per chunk
//   node dist/bench/snapshot.js     (BENCH_ROUNDS=3 BENCH_SIZE_MIB=1024 BENCH_DAEMON_ARGS='--sendfile-min 0')
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fioMegabytesPerSecond, median, runTool, spawnBlksnapd } from './common.js';
import { BlksnapClient } from '../src/client/connection.js';
import * as api from '../src/control/protocol.js';

const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const sizeMiB = Number(process.env.BENCH_SIZE_MIB ?? 1024);
const TiB = 2 ** 40;


async function startDaemon(dir: string): Promise<{ child: ChildProcess; client: BlksnapClient; nbd: string; stop: () => Promise<void> }> {
  const daemon = await spawnBlksnapd(dir);
  return { ...daemon, client: await BlksnapClient.connect(daemon.control) };
}

/**
 * fio sequential pass over the first sizeMiB (not time based: every chunk is touched exactly once).
 * Reads from the page cache go over it READ_LOOPS times: one pass takes a quarter of a second, too
 * short to compare two of them (single passes of device and image swung 0.74–1.33× apart).
 */
const READ_LOOPS = 4;
async function fioPass(uri: string, rw: 'write' | 'read', iodepth: number, offsetMiB = 0): Promise<number> {
  // Every pass starts with no dirty pages: one pass's writeback must not slow the next (runs swung 0.4–0.8× without it).
  await runTool('sync', []);
  const out = await runTool('fio', ['--name=b', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, '--bs=1m', `--iodepth=${iodepth}`, `--size=${sizeMiB}m`, `--offset=${offsetMiB}m`, `--loops=${rw === 'read' ? READ_LOOPS : 1}`, '--output-format=json']);
  return fioMegabytesPerSecond(out).mbps;
}


function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blksnap-bench-snap-'));
  const { client, nbd, stop } = await startDaemon(dir);
  try {
    const file = path.join(dir, 'disk.raw');
    fs.writeFileSync(file, '');
    // The first sizeMiB are prefilled; each round's fresh-pages pass writes its own never-written range after them.
    fs.truncateSync(file, (rounds + 1) * sizeMiB * 2 ** 20);
    await client.call(api.DeviceAttach, { path: file, name: 'disk' });
    const uri = (name: string) => `nbd+unix:///${name}?socket=${nbd}`;
    await fioPass(uri('disk'), 'write', 32); // allocate, so passthrough and COW both overwrite data
    const results = { passthrough: [] as number[], freshPages: [] as number[], cow: [] as number[], device: [] as number[], imageUntouched: [] as number[], imageKept: [] as number[] };
    for (let r = 0; r < rounds; r++) {
      results.passthrough.push(await fioPass(uri('disk'), 'write', 32));
      results.freshPages.push(await fioPass(uri('disk'), 'write', 32, (r + 1) * sizeMiB));
      results.device.push(await fioPass(uri('disk'), 'read', 32));
      const { id } = await client.call(api.SnapshotCreate, { devices: ['disk'], diffStorage: dir, limit: 8 * 2 ** 30 });
      await client.call(api.SnapshotTake, { id });
      results.imageUntouched.push(await fioPass(uri('disk-image'), 'read', 32));
      results.cow.push(await fioPass(uri('disk'), 'write', 32));
      results.imageKept.push(await fioPass(uri('disk-image'), 'read', 32));
      await client.call(api.SnapshotDestroy, { id });
    }
    const p = median(results.passthrough);
    const f = median(results.freshPages);
    const c = median(results.cow);
    const d = median(results.device);
    const iu = median(results.imageUntouched);
    const ik = median(results.imageKept);
    console.log(`# ${rounds} rounds, ${sizeMiB} MiB sequential passes (reads over it ${READ_LOOPS} times), 1 MiB requests at depth 32, chunks 256 KiB, ${os.cpus().length} cores`);
    const perRound = (of: number[], to: number[]) => of.map((x, i) => `${(x / (to[i] as number)).toFixed(2)}×`).join(' ');
    console.log(`passthrough write       ${p.toFixed(0).padStart(6)} MB/s   (over cached pages)`);
    console.log(`passthrough, new pages  ${f.toFixed(0).padStart(6)} MB/s   (never-written ranges: the page cache takes new pages, as the COW copies do)`);
    console.log(`COW first write         ${c.toFixed(0).padStart(6)} MB/s   ratio ${(c / p).toFixed(2)}× (target ≥ 0.45×), ${(c / f).toFixed(2)}× of passthrough into new pages`);
    // Each round's own ratio: the target is a steady one.
    console.log(`  per round               ${perRound(results.cow, results.passthrough)}; to new pages ${perRound(results.cow, results.freshPages)}`);
    console.log(`  MB/s per round          passthrough ${results.passthrough.map((x) => x.toFixed(0)).join(' ')}; COW ${results.cow.map((x) => x.toFixed(0)).join(' ')}`);
    console.log(`device read             ${d.toFixed(0).padStart(6)} MB/s`);
    console.log(`image read (untouched)  ${iu.toFixed(0).padStart(6)} MB/s   ratio ${(iu / d).toFixed(2)}× (target ≥ 0.95×)`);
    console.log(`  per round               ${perRound(results.imageUntouched, results.device)}`);
    console.log(`image read (all kept)   ${ik.toFixed(0).padStart(6)} MB/s   ratio ${(ik / d).toFixed(2)}×`);
    await client.call(api.DeviceDetach, { device: 'disk' });

    // Take latency: 4 sparse devices of 1 TiB.
    const names: string[] = [];
    for (let i = 0; i < 4; i++) {
      const f = path.join(dir, `big${i}`);
      fs.writeFileSync(f, '');
      fs.truncateSync(f, TiB);
      names.push((await client.call(api.DeviceAttach, { path: f, name: `big${i}` })).name);
    }
    const takes: number[] = [];
    // As every pass starts: the passes' writeback (and the discards of their freed difference storage)
    // would otherwise sit in front of the takes' fsyncs of CBT state.
    await runTool('sync', []);
    // Fifteen: one take ranges 12–80 ms here (its fsyncs of CBT state), so a median of five swung 30–77 ms.
    for (let r = 0; r < Math.max(15, rounds); r++) {
      const { id } = await client.call(api.SnapshotCreate, { devices: names, diffStorage: dir, limit: 2 ** 30, diffStorageMinimum: 64 * 2 ** 20 });
      const t0 = process.hrtime.bigint();
      await client.call(api.SnapshotTake, { id });
      takes.push(Number(process.hrtime.bigint() - t0) / 1e6);
      await client.call(api.SnapshotDestroy, { id });
    }
    console.log(`take, 4 × 1 TiB sparse  ${median(takes).toFixed(1).padStart(6)} ms (median of ${takes.length}, control round trip included; target < 50 ms)`);
    for (const n of names) await client.call(api.DeviceDetach, { device: n });

    // RSS of a fresh daemon with a 4 TiB sparse device, then with a snapshot held.
    const fresh = await startDaemon(fs.mkdtempSync(path.join(dir, 'fresh-')));
    try {
      const f = path.join(dir, 'huge');
      fs.writeFileSync(f, '');
      fs.truncateSync(f, 4 * TiB);
      const pid = fresh.child.pid as number;
      const idle = rssKiB(pid);
      await fresh.client.call(api.DeviceAttach, { path: f, name: 'huge' });
      const attached = rssKiB(pid);
      const { id } = await fresh.client.call(api.SnapshotCreate, { devices: ['huge'], diffStorage: dir, limit: 2 ** 30, diffStorageMinimum: 64 * 2 ** 20 });
      await fresh.client.call(api.SnapshotTake, { id });
      const held = rssKiB(pid);
      const chunks = (4 * TiB) / 2 ** 18;
      const mib = (k: number) => (k / 1024).toFixed(0);
      console.log(`RSS, 4 TiB device       ${mib(idle)} MiB idle, ${mib(attached)} MiB attached (CBT maps), ${mib(held)} MiB with a snapshot held`);
      console.log(`chunk metadata          6 bytes per chunk (state Uint8Array + slot Uint32Array + page-cache mark Uint8Array): ${((chunks * 6) / 2 ** 20).toFixed(0)} MiB for ${chunks} chunks; pages become resident as chunks are touched`);
      await fresh.client.call(api.SnapshotDestroy, { id });
    } finally {
      await fresh.client.close();
      await fresh.stop();
    }
  } finally {
    await client.close();
    await stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
