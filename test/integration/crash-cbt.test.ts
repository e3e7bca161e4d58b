// Crash recovery of CBT under write load: a writer logs every write it sends and every one
// acknowledged; the daemon is killed (-9) at random moments, several times, and restarted on its state
// directory. Then a take: every acknowledged block has a read-map byte > k, the marks stay within the
// sent blocks plus the write-intent regions of the last save interval before each kill, and an
// incremental copy (the blocks with byte > k, applied onto a copy of the image at k) equals the image.
import assert from 'node:assert/strict';
import { randomFillSync, randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { NbdClient } from '../helpers/nbd-client.js';
import { check, missing, sparseFile, tempDir } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DEVICE = 64 * MiB;
const BLOCK = 64 * KiB; // the CBT block of a 64 MiB device
const REGION = 256 * KiB;
const SYNC_SECONDS = 0.5;
/** How long before a kill a write may have come and still be covered only by its region's mark. */
const BOUND_WINDOW_MS = 2 * SYNC_SECONDS * 1000 + 1000;
const KILLS = 4;

type CbtInfo = { generationId: string; changesNumber: number; origin: string; originReason?: string };

interface Sent {
  offset: number;
  length: number;
  at: number;
  acked: boolean;
}

function blocksOf(offset: number, length: number): number[] {
  const out: number[] = [];
  for (let b = Math.floor(offset / BLOCK); b <= Math.floor((offset + length - 1) / BLOCK); b++) out.push(b);
  return out;
}

function regionBlocksOf(offset: number, length: number): number[] {
  const first = Math.floor(offset / REGION) * REGION;
  const end = Math.ceil((offset + length) / REGION) * REGION;
  return blocksOf(first, end - first);
}

/**
 * Writes until the connection breaks: 16 writers, each picking a random range (4 KiB to 128 KiB,
 * crossing block edges) inside a hot set of 4 blocks that moves every second, so that the
 * marks a crash may add stay far from the whole device.
 */
async function writeUntilKilled(client: NbdClient, log: Sent[]): Promise<void> {
  let hot: number[] = [];
  const moveHot = (): void => {
    hot = Array.from({ length: 4 }, () => randomInt(DEVICE / BLOCK - 2));
  };
  moveHot();
  const mover = setInterval(moveHot, 1000);
  const writer = async (): Promise<void> => {
    for (;;) {
      const block = hot[randomInt(hot.length)] as number;
      const offset = block * BLOCK + randomInt(BLOCK / 4096) * 4096;
      const length = (1 + randomInt(32)) * 4096;
      const data = randomFillSync(Buffer.alloc(length));
      const sent: Sent = { offset, length, at: Date.now(), acked: false };
      log.push(sent);
      await client.pwrite(offset, data);
      sent.acked = true;
    }
  };
  try {
    await Promise.allSettled(Array.from({ length: 16 }, writer));
  } finally {
    clearInterval(mover);
  }
}

describe('durable CBT: crashes under write load', { skip: missing('nbdcopy') }, () => {
  it(`${KILLS} kill -9 at random moments: the generation and numbers stay, no write goes unmarked, the incremental is bit-identical`, async (t) => {
    const { dir, remove } = tempDir('blksnapd-crash-');
    const store = sparseFile(path.join(dir, 'disk.img'), DEVICE);
    const options = ['--cbt-region', `${REGION / KiB}K`, '--cbt-sync-interval', String(SYNC_SECONDS)];
    let daemon = await TestDaemon.startIn(dir, remove, ['--attach', store, ...options]);
    try {
      // Some data, then snapshot k, copied whole: the base of the incremental.
      const first = await NbdClient.connect(daemon.nbdPath, 'disk.img');
      for (let at = 0; at < DEVICE; at += 4 * MiB) await first.pwrite(at, randomFillSync(Buffer.alloc(MiB)));
      first.close();
      const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'disk.img', '--file', dir, '--limit', '256M');
      await daemon.json('snapshot_take', '--id', id);
      const base = path.join(dir, 'base.img');
      await check('nbdcopy', [daemon.uri('disk.img-image'), base]);
      await daemon.json('snapshot_destroy', '--id', id);
      const atBase = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
      const k = atBase.changesNumber;

      const log: Sent[] = [];
      const kills: number[] = [];
      const rounds: number[] = [];
      for (let round = 0; round < KILLS; round++) {
        const client = await NbdClient.connect(daemon.nbdPath, 'disk.img');
        const writing = writeUntilKilled(client, log);
        const ms = 500 + randomInt(3000);
        rounds.push(ms);
        await new Promise((r) => setTimeout(r, ms));
        kills.push(Date.now());
        await daemon.kill();
        await writing;
        client.close();
        daemon = await TestDaemon.startIn(dir, remove, options);
        const info = await daemon.json<CbtInfo>('cbtinfo', '--device', 'disk.img');
        assert.deepEqual([info.generationId, info.changesNumber, info.origin], [atBase.generationId, k, 'recovered'], `after kill ${round + 1}: ${info.originReason}`);
      }
      const acked = log.filter((s) => s.acked);
      assert.ok(acked.length > 100, `the writer got ${acked.length} writes acknowledged`);

      // Snapshot k+1 and its read map.
      const next = await daemon.json<{ id: string }>('snapshot_create', '--device', 'disk.img', '--file', dir, '--limit', '256M');
      await daemon.json('snapshot_take', '--id', next.id);
      const mapFile = path.join(dir, 'map');
      await daemon.json('readcbtmap', '--device', 'disk.img', '--file', mapFile);
      const map = fs.readFileSync(mapFile);

      for (const s of acked) {
        for (const b of blocksOf(s.offset, s.length)) assert.ok((map[b] as number) > k, `block ${b} was written (acknowledged) and has byte ${map[b]}, not > ${k}`);
      }
      const allowed = new Set<number>();
      for (const s of log) {
        const nearKill = kills.some((t) => s.at <= t && t - s.at <= BOUND_WINDOW_MS);
        for (const b of nearKill ? regionBlocksOf(s.offset, s.length) : blocksOf(s.offset, s.length)) allowed.add(b);
      }
      const marked = [...map.keys()].filter((b) => (map[b] as number) > k);
      const beyond = marked.filter((b) => !allowed.has(b));
      assert.deepEqual(beyond, [], 'marked blocks lie within the sent blocks and the write-intent bound');
      const written = new Set(log.flatMap((s) => blocksOf(s.offset, s.length)));
      assert.ok(marked.length < DEVICE / BLOCK / 2, `${marked.length} of ${DEVICE / BLOCK} blocks marked (${written.size} written): the bound is not the whole device`);

      t.diagnostic(`${log.length} writes sent, ${acked.length} acknowledged; ${written.size} blocks written, ${marked.length} marked; rounds of ${rounds.join(', ')} ms before the kill`);

      // The incremental: the marked blocks of image k+1 onto the copy of image k give image k+1.
      const now = path.join(dir, 'now.img');
      await check('nbdcopy', [daemon.uri('disk.img-image'), now]);
      const fdBase = fs.openSync(base, 'r+');
      const fdNow = fs.openSync(now, 'r');
      const block = Buffer.alloc(BLOCK);
      for (const b of marked) {
        const n = fs.readSync(fdNow, block, 0, BLOCK, b * BLOCK);
        fs.writeSync(fdBase, block, 0, n, b * BLOCK);
      }
      fs.closeSync(fdBase);
      fs.closeSync(fdNow);
      await check('cmp', [base, now]);
      await daemon.json('snapshot_destroy', '--id', next.id);
    } finally {
      await daemon.stop();
    }
  });
});
