// Benchmark: fio (libaio, direct=1) on the kernel block device of a device and of its snapshot image,
// against the same fio on a loop device bound straight to the backing file. Prints ratios.
//   node dist/bench/block-device.js      (BENCH_RUNTIME=4 seconds per profile, BENCH_ROUTES=fuse,fuse-rw,nbdfuse)
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fioMegabytesPerSecond, spawnBlksnapd } from './common.js';
import { BlksnapClient } from '../src/client/connection.js';
import * as api from '../src/control/protocol.js';

const runtime = Number(process.env.BENCH_RUNTIME ?? 4);
const profiles = [
  { name: 'seq-read-1m-qd16', rw: 'read', bs: '1m' },
  { name: 'seq-write-1m-qd16', rw: 'write', bs: '1m' },
  { name: 'rand-read-4k-qd16', rw: 'randread', bs: '4k' },
  { name: 'rand-write-4k-qd16', rw: 'randwrite', bs: '4k' },
];

function fio(device: string, rw: string, bs: string): number {
  const out = execFileSync('fio', ['--name=b', `--filename=${device}`, '--ioengine=libaio', '--direct=1', `--rw=${rw}`, `--bs=${bs}`, '--iodepth=16', '--size=512m', '--time_based', `--runtime=${runtime}`, '--ramp_time=1', '--output-format=json'], { encoding: 'utf8' });
  return fioMegabytesPerSecond(out).mbps;
}

/** fuse: the daemon's FUSE server by io_uring where the kernel has it; fuse-rw: the same by read/write on /dev/fuse. */
function routeArgs(route: string): string[] {
  if (route === 'fuse') return ['--loop-via', 'fuse', '--fuse-io-uring', 'on'];
  if (route === 'fuse-rw') return ['--loop-via', 'fuse', '--fuse-io-uring', 'off'];
  return ['--loop-via', route];
}

/** fio on a device's and on its image's block device, with the daemon using `route`; MB/s per profile. */
async function measureRoute(dir: string, file: string, route: string): Promise<{ device: number[]; image: number[] }> {
  const daemon = await spawnBlksnapd(dir, { args: routeArgs(route), stateDir: path.join(dir, route), tag: `-${route}` });
  const client = await BlksnapClient.connect(daemon.control);
  try {
    const device = await client.call(api.DeviceAttach, { path: file, name: 'disk', loop: true });
    const onDevice = profiles.map((p) => fio(device.blockDevice as string, p.rw, p.bs));
    const { id } = await client.call(api.SnapshotCreate, { devices: ['disk'], diffStorage: dir, limit: 4 * 2 ** 30 });
    await client.call(api.SnapshotTake, { id });
    const image = (await client.call(api.SnapshotGetInfo, { device: 'disk' })).image?.blockDevice as string;
    const onImage = profiles.map((p) => fio(image, p.rw, p.bs));
    await client.call(api.SnapshotDestroy, { id });
    await client.call(api.DeviceDetach, { device: 'disk' });
    return { device: onDevice, image: onImage };
  } finally {
    await client.close();
    await daemon.stop();
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blksnap-bench-bdev-'));
  const file = path.join(dir, 'disk.raw');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, 2 ** 30);
  execFileSync('dd', [`if=/dev/urandom`, `of=${file}`, 'bs=1M', 'count=600', 'conv=notrunc', 'status=none']);
  const routes = (process.env.BENCH_ROUTES ?? 'fuse,fuse-rw,nbdfuse').split(',');
  const rows: string[] = [];
  try {
    const plain = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
    let plainMbps: number[];
    try {
      plainMbps = profiles.map((p) => fio(plain, p.rw, p.bs));
    } finally {
      execFileSync('losetup', ['-d', plain]);
    }
    const measured = new Map<string, { device: number[]; image: number[] }>();
    for (const route of routes) measured.set(route, await measureRoute(dir, file, route));
    rows.push(`# fio libaio direct=1 depth 16, ${runtime}s per profile, 1 GiB file; ratios to a plain (buffered) loop device on the same file`);
    rows.push(`# routes: fuse = /dev/loopN over blksnapd's own FUSE file (requests by io_uring where the kernel offers it); fuse-rw = the same by read/write on /dev/fuse; nbdfuse = /dev/loopN over nbdfuse over blksnapd's NBD`);
    const f = (x: number | undefined) => `${(x ?? 0).toFixed(0)}`.padStart(8);
    const ratio = (x: number | undefined, base: number | undefined) => `${((x ?? 0) / (base ?? 1)).toFixed(2)}×`.padStart(7);
    rows.push(`${'MB/s'.padEnd(20)}${'plain'.padStart(8)}${routes.map((r) => `${`${r} dev`.padStart(15)}${`${r} img`.padStart(15)}`).join('')}`);
    profiles.forEach((p, i) => {
      const cells = routes.map((r) => {
        const m = measured.get(r);
        return `${f(m?.device[i])}${ratio(m?.device[i], plainMbps[i])}${f(m?.image[i])}${ratio(m?.image[i], plainMbps[i])}`;
      });
      rows.push(`${p.name.padEnd(20)}${f(plainMbps[i])}${cells.join('')}`);
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(rows.join('\n'));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
