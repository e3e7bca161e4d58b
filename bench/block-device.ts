// Benchmark: fio (libaio, direct=1) on the kernel block device of a device and of its snapshot image,
// against the same fio on a loop device bound straight to the backing file. Prints ratios.
//   node dist/bench/block-device.js      (BENCH_RUNTIME=4 seconds per profile)
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fioMegabytesPerSecond } from './common.js';
import { BlksnapClient } from '../src/client/connection.js';
import * as api from '../src/control/protocol.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
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

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blksnap-bench-bdev-'));
  const file = path.join(dir, 'disk.raw');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, 2 ** 30);
  execFileSync('dd', [`if=/dev/urandom`, `of=${file}`, 'bs=1M', 'count=600', 'conv=notrunc', 'status=none']);
  const control = path.join(dir, 'control.sock');
  const daemon = spawn(process.execPath, [path.join(root, 'bin/blksnapd'), '--control', control, '--nbd', path.join(dir, 'nbd.sock'), '--state-dir', dir], { stdio: 'ignore' });
  for (let i = 0; i < 500 && !fs.existsSync(control); i++) await new Promise((r) => setTimeout(r, 20));
  const client = await BlksnapClient.connect(control);
  const rows: string[] = [];
  try {
    const plain = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
    const results = new Map<string, number[]>();
    try {
      for (const p of profiles) results.set(p.name, [fio(plain, p.rw, p.bs)]);
    } finally {
      execFileSync('losetup', ['-d', plain]);
    }
    const device = await client.call(api.DeviceAttach, { path: file, name: 'disk', loop: true });
    for (const p of profiles) results.get(p.name)?.push(fio(device.blockDevice as string, p.rw, p.bs));
    const { id } = await client.call(api.SnapshotCreate, { devices: ['disk'], diffStorage: dir, limit: 4 * 2 ** 30 });
    await client.call(api.SnapshotTake, { id });
    const image = (await client.call(api.SnapshotGetInfo, { device: 'disk' })).image?.blockDevice as string;
    for (const p of profiles) results.get(p.name)?.push(fio(image, p.rw, p.bs));
    await client.call(api.SnapshotDestroy, { id });
    await client.call(api.DeviceDetach, { device: 'disk' });
    rows.push(`# fio libaio direct=1 depth 16, ${runtime}s per profile, 1 GiB file; device and image are /dev/loopN over nbdfuse over blksnapd's NBD`);
    rows.push(`${'profile'.padEnd(22)}${'plain loop'.padStart(12)}${'device'.padStart(12)}${'ratio'.padStart(8)}${'image'.padStart(12)}${'ratio'.padStart(8)}`);
    for (const p of profiles) {
      const [plainMbps, deviceMbps, imageMbps] = results.get(p.name) as number[];
      const f = (x: number | undefined) => `${(x ?? 0).toFixed(0)} MB/s`.padStart(12);
      rows.push(`${p.name.padEnd(22)}${f(plainMbps)}${f(deviceMbps)}${`${((deviceMbps ?? 0) / (plainMbps ?? 1)).toFixed(2)}×`.padStart(8)}${f(imageMbps)}${`${((imageMbps ?? 0) / (plainMbps ?? 1)).toFixed(2)}×`.padStart(8)}`);
    }
  } finally {
    await client.close();
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(rows.join('\n'));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
