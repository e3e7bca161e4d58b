// CBT readable by any NBD client: qemu:dirty-bitmap:cbt-J and x-blksnap:cbt on device and
// image exports, read with nbdinfo, qemu-img map (x-dirty-bitmap) and libnbd's Python binding.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestDaemon } from '../helpers/daemon.js';
import { check, missing, sparseFile, tempDir } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const SIZE = 8 * MiB;
const skip = missing('nbdinfo', 'qemu-img', 'qemu-io', '/usr/bin/python3');

type Extent = { offset: number; length: number; type: number };

/** Blocks (by index) whose extents carry a non-zero flag, from nbdinfo --map --json. */
function flaggedBlocks(extents: readonly Extent[]): Map<number, number> {
  const out = new Map<number, number>();
  for (const e of extents) {
    assert.equal(e.offset % BLOCK, 0, 'extents start on tracking-block edges');
    assert.ok(e.length % BLOCK === 0 || e.offset + e.length === SIZE, 'extents end on tracking-block edges');
    if (e.type !== 0) for (let b = e.offset / BLOCK; b < (e.offset + e.length) / BLOCK; b++) out.set(b, e.type);
  }
  return out;
}

describe('CBT over NBD', { skip }, () => {
  let daemon: TestDaemon;
  let tmp: { dir: string; remove: () => void };
  let image = '';
  let snapshotId = '';
  const written = { a: 0, b: 2 * MiB + 5, c: 5 * MiB - 100, d: 7 * MiB };

  before(async () => {
    tmp = tempDir();
    daemon = await TestDaemon.start(['--attach', sparseFile(path.join(tmp.dir, 'dev'), SIZE)]);
    const write = (at: number, length: number) => check('qemu-io', ['-f', 'raw', '-c', `write ${at} ${length}`, daemon.uri('dev')]);
    const take = async (): Promise<string> => {
      const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'dev', '--file', tmp.dir, '--limit', '64M');
      await daemon.json('snapshot_take', '--id', id);
      return id;
    };
    // Three increments: A before take 1, B before take 2, C before take 3 (kept); D after it.
    await write(written.a, 4 * KiB);
    await daemon.json('snapshot_destroy', '--id', await take());
    await write(written.b, 200 * KiB);
    await daemon.json('snapshot_destroy', '--id', await take());
    await write(written.c, 200);
    snapshotId = await take();
    await write(written.d, 64 * KiB);
    image = daemon.uri('dev-image');
  });
  after(async () => {
    if (snapshotId) await daemon?.json('snapshot_destroy', '--id', snapshotId);
    await daemon?.stop();
    tmp?.remove();
  });

  async function map(uri: string, context: string): Promise<Extent[]> {
    return JSON.parse(await check('nbdinfo', [`--map=${context}`, '--json', uri])) as Extent[];
  }

  const blocksOf = (at: number, length: number): number[] => {
    const out: number[] = [];
    for (let b = Math.floor(at / BLOCK); b <= Math.floor((at + length - 1) / BLOCK); b++) out.push(b);
    return out;
  };
  const A = blocksOf(written.a, 4 * KiB);
  const B = blocksOf(written.b, 200 * KiB);
  const C = blocksOf(written.c, 200);
  const D = blocksOf(written.d, 64 * KiB);

  it('an image after three increments: cbt-J is dirty exactly where readcbtmap says byte > J', async () => {
    const file = path.join(tmp.dir, 'map');
    await daemon.json('readcbtmap', '--device', 'dev', '--file', file);
    const readMap = fs.readFileSync(file);
    const info = await daemon.json<{ changesNumber: number }>('cbtinfo', '--device', 'dev');
    assert.equal(info.changesNumber, 3);
    for (let j = 0; j <= 3; j++) {
      const dirty = [...flaggedBlocks(await map(image, `qemu:dirty-bitmap:cbt-${j}`)).keys()].sort((x, y) => x - y);
      const expected = [...readMap.entries()].filter(([, byte]) => byte > j).map(([b]) => b);
      assert.deepEqual(dirty, expected, `image cbt-${j}`);
    }
    assert.deepEqual([...flaggedBlocks(await map(image, 'qemu:dirty-bitmap:cbt-1')).keys()].sort((x, y) => x - y), [...B, ...C]);
    // x-blksnap:cbt carries the byte itself: 1, 2, 3 for A, B, C on the image; D is after its take.
    const bytes = flaggedBlocks(await map(image, 'x-blksnap:cbt'));
    assert.deepEqual([...bytes.entries()].sort((x, y) => x[0] - y[0]), [...A.map((b) => [b, 1]), ...B.map((b) => [b, 2]), ...C.map((b) => [b, 3])]);
  });

  it('a device export counts writes since the last take too (the active map)', async () => {
    assert.deepEqual([...flaggedBlocks(await map(daemon.uri('dev'), 'qemu:dirty-bitmap:cbt-2')).keys()].sort((x, y) => x - y), [...C, ...D]);
    const bytes = flaggedBlocks(await map(daemon.uri('dev'), 'x-blksnap:cbt'));
    assert.deepEqual(D.map((b) => bytes.get(b)), D.map(() => 4));
  });

  it('qemu-img map with x-dirty-bitmap sees the dirty blocks (as QEMU reports them: no data)', async () => {
    const out = JSON.parse(await check('qemu-img', ['map', '--output=json', '--image-opts', `driver=nbd,server.type=unix,server.path=${daemon.nbdPath},export=dev,x-dirty-bitmap=qemu:dirty-bitmap:cbt-2`])) as Array<{ start: number; length: number; data: boolean }>;
    const dirty: number[] = [];
    for (const e of out) if (!e.data) for (let b = e.start / BLOCK; b < (e.start + e.length) / BLOCK; b++) dirty.push(b);
    assert.deepEqual(dirty, [...C, ...D]);
  });

  it('LIST_META_CONTEXT lists the bitmaps; both contexts on one connection; REQ_ONE gives one extent', async () => {
    const e = JSON.parse(await check('nbdinfo', ['--json', daemon.uri('dev')])) as { exports: Array<{ contexts: string[] }> };
    assert.deepEqual(e.exports[0]?.contexts, ['base:allocation', 'x-blksnap:cbt', 'qemu:dirty-bitmap:cbt-0', 'qemu:dirty-bitmap:cbt-1', 'qemu:dirty-bitmap:cbt-2', 'qemu:dirty-bitmap:cbt-3']);
    const script = `
import nbd, json
h.set_opt_mode(True)
h.add_meta_context("qemu:dirty-bitmap:")
h.connect_uri(${JSON.stringify(daemon.uri('dev'))})
listed = []
h.opt_list_meta_context(lambda name: listed.append(name))
h.opt_abort()
g = nbd.NBD()
g.add_meta_context("qemu:dirty-bitmap:cbt-2")
g.add_meta_context("base:allocation")
g.connect_uri(${JSON.stringify(daemon.uri('dev'))})
one, full = [], []
g.block_status(${SIZE}, 0, lambda ctx, off, entries, err: one.append([ctx, list(entries)]), nbd.CMD_FLAG_REQ_ONE)
g.block_status(${SIZE}, 0, lambda ctx, off, entries, err: full.append([ctx, list(entries)]))
print(json.dumps({"listed": listed, "one": one, "full": full}))
`;
    const r = JSON.parse(await check('/usr/bin/python3', ['-m', 'nbd', '-c', script])) as { listed: string[]; one: Array<[string, number[]]>; full: Array<[string, number[]]> };
    assert.deepEqual(r.listed, ['qemu:dirty-bitmap:cbt-0', 'qemu:dirty-bitmap:cbt-1', 'qemu:dirty-bitmap:cbt-2', 'qemu:dirty-bitmap:cbt-3']);
    assert.deepEqual(r.one.map(([ctx, entries]) => [ctx, entries.length]).sort(), [['base:allocation', 2], ['qemu:dirty-bitmap:cbt-2', 2]]);
    assert.deepEqual(r.full.map(([ctx]) => ctx).sort(), ['base:allocation', 'qemu:dirty-bitmap:cbt-2']);
  });
});
