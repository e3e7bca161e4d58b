// Benchmark: the difference storage a backup of a busy device needs, with and without
// --discard-after-read. A device of BENCH_DISCARD_MIB (default 2048) of random data; a steady writer
// puts 64 KiB blocks at random places at BENCH_WRITER_MBPS (default 80 MB/s, eight in flight) while a full backup
// reads the snapshot's image (one read front, so the backup takes a while); the peak of the
// difference storage (bytes holding originals) is polled from snapshot_info. With discard, a chunk
// the backup has read gives its space back, and a copy takes a given-back slot before new space.
//   node dist/bench/discard-after-read.js
import { randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createBackup } from '../src/backup/backup-create.js';
import { BlksnapClient } from '../src/client/connection.js';
import { NbdClient } from '../src/client/nbd-client.js';
import * as api from '../src/control/protocol.js';
import { Repository } from '../src/repository/repository.js';
import { spawnBlksnapd } from './common.js';

const MiB = 1024 * 1024;
const sizeMiB = Number(process.env.BENCH_DISCARD_MIB ?? 2048);
const writerMBps = Number(process.env.BENCH_WRITER_MBPS ?? 80);
const BLOCK = 64 * 1024;

/** Writes random blocks at random places at `mbps` until stopped; how many bytes it wrote. */
function steadyWriter(uri: string, mbps: number): { stop: () => Promise<number> } {
  let running = true;
  let written = 0;
  const done = (async () => {
    const nbd = await NbdClient.connect(uri);
    const data = randomFillSync(Buffer.alloc(BLOCK));
    const started = Date.now();
    // Eight writes in flight: one at a time, each waiting for its copy-on-write, fell far short of the rate.
    const lane = async (): Promise<void> => {
      while (running) {
        const at = Math.floor(Math.random() * ((sizeMiB * MiB) / BLOCK)) * BLOCK;
        written += BLOCK;
        await nbd.write(at, data);
        const ahead = written / (mbps * 1e6) - (Date.now() - started) / 1000;
        if (ahead > 0) await new Promise((r) => setTimeout(r, ahead * 1000));
      }
    };
    try {
      await Promise.all(Array.from({ length: 8 }, lane));
    } finally {
      await nbd.close();
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return written;
    },
  };
}

async function run(discard: boolean, dir: string): Promise<{ peakMiB: number; seconds: number; writtenMiB: number }> {
  const daemon = await spawnBlksnapd(dir, { tag: discard ? '-d' : '-n', stateDir: path.join(dir, discard ? 'state-d' : 'state-n') });
  const client = await BlksnapClient.connect(daemon.control);
  try {
    const file = path.join(dir, 'disk.img');
    await client.call(api.DeviceAttach, { path: file, name: 'disk' });
    const repo = await Repository.init(path.join(dir, discard ? 'repo-d' : 'repo-n'), { key: null });
    const uri = `nbd+unix:///disk?socket=${daemon.nbd}`;
    const writer = steadyWriter(uri, writerMBps);
    let peak = 0;
    let polling = true;
    const poll = (async () => {
      while (polling) {
        const info = await client.call(api.SnapshotGetInfo, { device: 'disk' }).catch(() => null);
        peak = Math.max(peak, info?.diffStorage?.peakBytes ?? 0);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const started = Date.now();
    await createBackup(repo, client, { devices: ['disk'], diffStorage: dir, readFronts: 1, discardAfterRead: discard });
    const seconds = (Date.now() - started) / 1000;
    polling = false;
    await poll;
    const writtenMiB = (await writer.stop()) / MiB;
    await client.call(api.DeviceDetach, { device: 'disk' });
    return { peakMiB: peak / MiB, seconds, writtenMiB };
  } finally {
    await client.close();
    await daemon.stop();
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blksnap-bench-discard-'));
  try {
    const file = path.join(dir, 'disk.img');
    const fd = fs.openSync(file, 'w');
    const piece = Buffer.alloc(MiB);
    for (let at = 0; at < sizeMiB * MiB; at += MiB) fs.writeSync(fd, randomFillSync(piece), 0, MiB, at);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    console.log(`# difference storage a full backup needs under a steady writer: a ${sizeMiB} MiB device of random data, 64 KiB writes at random places at ${writerMBps} MB/s, ${os.availableParallelism()} cores`);
    const without = await run(false, dir);
    const withDiscard = await run(true, dir);
    for (const [name, r] of [['without', without], ['--discard-after-read', withDiscard]] as const) console.log(`${name.padEnd(22)} peak ${r.peakMiB.toFixed(0).padStart(5)} MiB; backup ${r.seconds.toFixed(1)} s while the writer wrote ${r.writtenMiB.toFixed(0)} MiB`);
    console.log(`peak with discard: ${(withDiscard.peakMiB / without.peakMiB).toFixed(2)}× the peak without`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
