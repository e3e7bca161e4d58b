// Snapshot take: atomic across devices under concurrent writes, CBT increments, the control surface and its errors.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { Session } from '../../src/client/session.js';
import { Cbt } from '../../src/index.js';
import * as api from '../../src/control/protocol.js';
import { blksnapCli } from '../helpers/daemon.js';
import { NbdClient } from '../helpers/nbd-client.js';
import { encodeRequest, NBD, RawNbd } from '../helpers/raw-nbd.js';
import { durationMs, Scenario } from '../helpers/scenario.js';

const MiB = 1024 * 1024;
const BLOCK = 65536;

describe('snapshot take', () => {
  let s: Scenario;
  before(async () => (s = await Scenario.start([16 * MiB, 16 * MiB, 16 * MiB])));
  after(async () => s?.stop());

  it('is atomic across devices under concurrent writes: every write wholly in or out, one cut for all', async () => {
    const a = await NbdClient.connect(s.daemon.nbdPath, 'dev0');
    const b = await NbdClient.connect(s.daemon.nbdPath, 'dev1');
    // Writers: each step n writes 64 KiB filled with n to A, then (after A's ack) the same to B,
    // at a slot of their own, many steps in flight. A 64 KiB write is torn if its bytes differ.
    const slots = 128;
    const lastAcked = { a: new Int32Array(slots).fill(-1), b: new Int32Array(slots).fill(-1) };
    let isRunning = true;
    const writers = Array.from({ length: 8 }, (_, w) => (async () => {
      for (let n = 1; isRunning; n++) {
        const slot = (w * 16 + (n % 16)) % slots;
        const data = Buffer.alloc(BLOCK, n % 251 || 1);
        data.writeUInt32LE(n, 0);
        await a.pwrite(slot * BLOCK, data);
        lastAcked.a[slot] = n;
        await b.pwrite(slot * BLOCK, data);
        lastAcked.b[slot] = n;
      }
    })());
    const rounds: string[] = [];
    const deadline = Date.now() + durationMs();
    do {
      await new Promise((r) => setTimeout(r, 50));
      const ackedBefore = { a: Int32Array.from(lastAcked.a), b: Int32Array.from(lastAcked.b) };
      const id = await s.take(['dev0', 'dev1']);
      const ia = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev0'));
      const ib = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev1'));
      const [imgA, imgB] = await Promise.all([ia.pread(0, slots * BLOCK), ib.pread(0, slots * BLOCK)]);
      for (let slot = 0; slot < slots; slot++) {
        const chunkA = imgA.subarray(slot * BLOCK, (slot + 1) * BLOCK);
        const chunkB = imgB.subarray(slot * BLOCK, (slot + 1) * BLOCK);
        const na = chunkA.readUInt32LE(0);
        const nb = chunkB.readUInt32LE(0);
        for (const [chunk, n] of [[chunkA, na], [chunkB, nb]] as const) {
          const fill = n % 251 || 1;
          assert.ok(n === 0 ? chunk.every((x) => x === 0) : chunk.subarray(4).every((x) => x === fill), `slot ${slot}: a torn write in an image`);
        }
        // B is written only after A acknowledged: B's step can never be ahead of A's.
        assert.ok(nb <= na, `slot ${slot}: image B has step ${nb} but image A only ${na}`);
        // Anything acknowledged before the take is in the image.
        assert.ok(na >= (ackedBefore.a[slot] as number) && nb >= (ackedBefore.b[slot] as number) - 0, `slot ${slot}: an acknowledged write is missing`);
      }
      ia.close();
      ib.close();
      await s.destroy(id);
      rounds.push(id);
    } while (Date.now() < deadline);
    isRunning = false;
    await Promise.all(writers);
    a.close();
    b.close();
    assert.ok(rounds.length >= 2);
  });

  it('a large write still arriving when a take begins is wholly in its image; a client stalled mid-payload holds the take back only briefly', async () => {
    // Large payloads land as they arrive, yet the device sees one write: the take waits for it.
    const writer = await RawNbd.connect(s.daemon.nbdPath);
    await writer.handshake('dev1');
    const payload = Buffer.alloc(MiB, 0x5a);
    writer.write(encodeRequest(NBD.WRITE, 0, 1n, 10 * MiB, MiB));
    writer.write(payload.subarray(0, MiB / 2));
    await new Promise((r) => setTimeout(r, 50));
    let isTaken = false;
    const taking = s.take(['dev1']).then((id) => {
      isTaken = true;
      return id;
    });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(isTaken, false, 'the take waits for the write in flight');
    writer.write(payload.subarray(MiB / 2));
    assert.equal((await writer.simpleReply()).error, 0);
    const id = await taking;
    const image = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev1'));
    assert.ok((await image.pread(10 * MiB, MiB)).equals(payload), 'the whole write is in the image');
    image.close();
    await s.destroy(id);

    // The client stops mid-payload: the take goes on within the stall window (1 s, twice at most);
    // the write still completes, the part sent after the take lands through copy-on-write.
    const dev = await NbdClient.connect(s.daemon.nbdPath, 'dev1');
    const before = await dev.pread(12 * MiB, MiB);
    writer.write(encodeRequest(NBD.WRITE, 0, 2n, 12 * MiB, MiB));
    writer.write(Buffer.alloc(MiB / 4, 0x6b));
    const stalledTake = s.take(['dev1']);
    const inTime = await Promise.race([stalledTake.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 5000))]);
    writer.write(Buffer.alloc((3 * MiB) / 4, 0x6b));
    assert.ok(inTime, 'a client stalled mid-payload held the take back for 5 s');
    const stalledId = await stalledTake;
    assert.equal((await writer.simpleReply()).error, 0);
    assert.ok((await dev.pread(12 * MiB, MiB)).equals(Buffer.alloc(MiB, 0x6b)), 'the device has the whole write');
    const stalledImage = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev1'));
    const seen = await stalledImage.pread(12 * MiB, MiB);
    let landed = 0;
    while (landed < MiB && seen[landed] === 0x6b) landed++;
    assert.ok(landed <= MiB / 4, `the image holds ${landed} bytes of the write: only those that landed before the take`);
    assert.ok(seen.subarray(landed).equals(before.subarray(landed)), 'the rest of the image is what the device held before');
    stalledImage.close();
    dev.close();
    writer.close();
    await s.destroy(stalledId);
  });

  it('cbt: three increments show exactly the changed blocks; the 255th take forces a new generation', async () => {
    const dev = await NbdClient.connect(s.daemon.nbdPath, 'dev2');
    const cbt = new Cbt(s.client, 'dev2');
    const changedSince = async (k: number): Promise<number[]> => [...(await cbt.readMap())].flatMap((v, i) => (v > k ? [i] : []));
    const takeAndDestroy = async () => s.destroy(await s.take(['dev2']));
    await takeAndDestroy(); // backup 1 (full)
    const increments = [[3, 4], [0, 200, 255], [4, 100]];
    let backup = (await cbt.info()).changesNumber;
    for (const blocks of increments) {
      for (const block of blocks) await dev.pwrite(block * BLOCK + 100, Buffer.alloc(10, 1));
      await takeAndDestroy();
      assert.deepEqual(await changedSince(backup), blocks, `increment after backup ${backup}`);
      backup = (await cbt.info()).changesNumber;
    }
    // Image writes mark both maps: the block shows up as changed since the last backup at once.
    const id = await s.take(['dev2']);
    const image = await NbdClient.connect(s.daemon.nbdPath, await s.imageName('dev2'));
    await image.pwrite(77 * BLOCK, Buffer.alloc(512, 5));
    image.close();
    const numbers = await cbt.readMap();
    assert.equal(numbers[77], (await cbt.info()).changesNumber);
    await s.destroy(id);
    const generation = (await cbt.info()).generationId;
    let info = await cbt.info();
    while (info.changesNumber < 254) {
      await takeAndDestroy();
      info = await cbt.info();
      assert.equal(info.generationId, generation);
    }
    await takeAndDestroy();
    info = await cbt.info();
    assert.equal(info.changesNumber, 255);
    assert.notEqual(info.generationId, generation, 'a new generation: the next backup must be full');
    dev.close();
  });

  it('refuses what blksnap refuses, with the errno', async () => {
    const id = await s.take(['dev0']);
    await assert.rejects(s.client.call(api.SnapshotTake, { id }), { code: 'EALREADY' });
    await assert.rejects(s.client.call(api.SnapshotCreate, { devices: ['dev0'], diffStorage: s.dir, limit: MiB }), { code: 'EBUSY' });
    await assert.rejects(s.client.call(api.SnapshotAdd, { id, device: 'dev1' }), { code: 'EALREADY' });
    await assert.rejects(s.client.call(api.DeviceDetach, { device: 'dev0' }), { code: 'EBUSY' });
    await s.destroy(id);
    await assert.rejects(s.destroy(id), { code: 'ESRCH' });
    await assert.rejects(s.client.call(api.SnapshotTake, { id: 'not-a-uuid' }), { code: 'EINVAL' });
    await assert.rejects(s.client.call(api.SnapshotCreate, { devices: ['dev0'], diffStorage: s.path('dev1'), limit: MiB }), { code: 'EBUSY' });
    await assert.rejects(s.client.call(api.SnapshotCreate, { devices: ['dev0'], diffStorage: s.path('dev0'), limit: MiB }), { code: 'EINVAL', message: /is a device of this snapshot/ });
    await assert.rejects(s.client.call(api.SnapshotCreate, { devices: ['dev0'], diffStorage: s.path('nowhere/x'), limit: MiB }), { code: 'ENOENT' });
    // A directory store is an unnamed file: nothing appears in the directory, nothing is left.
    const listing = fs.readdirSync(s.dir).sort();
    const inDir = await s.take(['dev0'], { diffStorage: s.dir });
    assert.deepEqual(fs.readdirSync(s.dir).sort(), listing);
    await s.destroy(inDir);
    await assert.rejects(s.client.call(api.SnapshotCreate, { devices: ['dev0'], diffStorage: s.dir, limit: 0 }), { code: 'EINVAL' });
    await assert.rejects(s.client.call(api.SnapshotCreate, { devices: ['ghost'], diffStorage: s.dir, limit: MiB }), { code: 'ENOENT' });
    const { id: empty } = await s.client.call(api.SnapshotCreate, { devices: [], diffStorage: s.dir, limit: MiB });
    await assert.rejects(s.client.call(api.SnapshotTake, { id: empty }), { code: 'EINVAL' });
    await s.destroy(empty);
    // A failed create leaves the device free.
    await s.destroy(await s.take(['dev0']));
  });

  it('a difference storage file that holds data is refused (EEXIST) and left as it was, unless --force; empty and sparse files are taken', async () => {
    const precious = s.path('precious');
    const content = Buffer.alloc(3 * MiB, 0x5a);
    fs.writeFileSync(precious, content);
    await assert.rejects(s.client.call(api.SnapshotCreate, { devices: ['dev0'], diffStorage: precious, limit: 4 * MiB }), { code: 'EEXIST', message: /holds data/ });
    const cli = await s.daemon.cli('snapshot_create', '--device', 'dev0', '--file', precious, '--limit', '4M');
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /EEXIST: difference storage .*precious holds data .*--force/);
    assert.ok(fs.readFileSync(precious).equals(content), 'not a byte of it was punched out');
    const sparse = s.path('sparse-store');
    fs.writeFileSync(sparse, '');
    fs.truncateSync(sparse, 8 * MiB);
    await s.destroy(await s.take(['dev0'], { diffStorage: sparse, limit: 8 * MiB }));
    const { id } = await s.daemon.json<{ id: string }>('snapshot_create', '--device', 'dev0', '--file', precious, '--limit', '4M', '--force');
    await s.destroy(id);
  });

  it('the CLI drives the whole life cycle with --json; the watcher prints events until destroy', async () => {
    const store = s.path('cli-store');
    fs.writeFileSync(store, '');
    const { id } = await s.daemon.json<{ id: string }>('snapshot_create', '--device', 'dev0', 'dev1', '--file', store, '--limit', '1M', '--diff-storage-minimum', '256K');
    assert.deepEqual(await s.daemon.json('snapshot_collect'), { ids: [id] });
    const watcher = spawn(process.execPath, [blksnapCli, 'snapshot_watcher', '--id', id, '--control', s.daemon.controlPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let watched = '';
    watcher.stdout.on('data', (d) => (watched += d));
    const exited = new Promise<number | null>((r) => watcher.on('exit', r));
    await s.daemon.json('snapshot_take', '--id', id);
    const info = await s.daemon.json<{ id: string; errorCode: number; image: { uri: string } }>('snapshot_info', '--device', 'dev0');
    assert.equal(info.id, id);
    assert.equal(info.errorCode, 0);
    assert.equal(info.image.uri, s.daemon.uri('dev0-image'));
    assert.deepEqual(await s.daemon.json('snapshot_waitevent', '--id', id, '--timeout', '10').then((e) => (e as { code: string }).code), 'timeout');
    const dev = await NbdClient.connect(s.daemon.nbdPath, 'dev0');
    await dev.pwrite(0, Buffer.alloc(4 * MiB, 1)); // overflows the 1M limit
    dev.close();
    await new Promise((r) => setTimeout(r, 300));
    await s.daemon.json('snapshot_destroy', '--id', id);
    assert.equal(await exited, 0);
    assert.match(watched, /no_space requestedSectors=\d+/);
    assert.match(watched, /corrupted device=dev0 errorCode=-28/);
    for (const c of ['snapshot_create', 'snapshot_add', 'snapshot_take', 'snapshot_collect', 'snapshot_info', 'snapshot_waitevent', 'snapshot_watcher', 'snapshot_destroy']) {
      const h = await s.daemon.cli(c, '--help');
      assert.match(h.stdout, new RegExp(`^Usage: blksnap ${c}`), c);
    }
    // snapshot_add before the take: both devices get images.
    const added = await s.daemon.json<{ id: string }>('snapshot_create', '--device', 'dev0', '--file', s.dir, '--limit', '64M');
    assert.equal((await s.daemon.cli('snapshot_add', '--id', added.id, '--device', 'dev1')).code, 0);
    await s.daemon.json('snapshot_take', '--id', added.id);
    for (const d of ['dev0', 'dev1']) assert.equal((await s.daemon.cli('snapshot_info', '--device', d, '--field', 'image')).stdout.trim(), s.daemon.uri(`${d}-image`));
    await s.daemon.json('snapshot_destroy', '--id', added.id);
    const bad = await s.daemon.cli('snapshot_create', '--device', 'dev0', '--file', store, '--limit', '12Q');
    assert.match(bad.stderr, /EINVAL: invalid size '12Q'/);
  });

  it('the library Session creates, takes, watches and destroys', async () => {
    const events: string[] = [];
    const session = await Session.create(s.client, { devices: ['dev1'], diffStorage: s.dir, limit: 256 * 1024, chunkMinimumShift: 16, onEvent: (e) => events.push(e.code) });
    const uri = await session.imageUri('dev1');
    assert.equal(uri, s.daemon.uri('dev1-image'));
    const dev = await NbdClient.connect(s.daemon.nbdPath, 'dev1');
    await dev.pwrite(0, Buffer.alloc(MiB, 3));
    dev.close();
    for (let i = 0; i < 50 && !session.error; i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(session.error?.data, { device: 'dev1', errorCode: -28 });
    await session.close();
    assert.deepEqual((await s.client.call(api.SnapshotCollect, {})).ids, []);
  });
});
