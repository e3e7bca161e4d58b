// A worker's check of a whole pack (backup_verify): every record against its index and its digest,
// with the pack read in windows, so records that straddle two windows are checked too.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { WorkerPool } from '../../../src/backup/workers/worker-pool.js';
import { sha256 } from '../../../src/repository/digest.js';
import { PLAIN } from '../../../src/repository/cipher.js';
import { LocalBackend } from '../../../src/repository/local-backend.js';
import { decodeIdx, encodeIdx, entriesOf, PackWriter, RECORD_HEADER } from '../../../src/repository/pack.js';
import { tempDir } from '../../helpers/tools.js';

/** A pack index's entries, checked as readers check it. */
function readIdx(file: string): ReturnType<typeof entriesOf> {
  return entriesOf(decodeIdx(fs.readFileSync(file), file));
}

const WINDOW = 8 * 1024 * 1024; // the check's read size (verify-worker CHECK_READ_BYTES)

describe('pack check', () => {
  const t = tempDir();
  const workers = new WorkerPool('verify');
  let paths: { pack: string; idx: string };
  let packId = '';
  let straddling: { digest: Buffer; offset: number; storedLength: number };
  let count = 0;

  before(async () => {
    // 300 chunks of 64 KiB, half random (stored as they are), half compressible: about 13 MiB, and
    // the 48-byte headers put record boundaries off the 8 MiB window boundary.
    const backend = new LocalBackend(t.dir);
    const writer = new PackWriter(backend, PLAIN, 2);
    for (let i = 0; i < 300; i++) {
      const data = i % 2 ? randomBytes(65536) : Buffer.alloc(65536, `chunk ${i} ${randomBytes(8).toString('hex')} `);
      writer.append(sha256(data), data);
      count++;
    }
    await writer.close();
    const id = writer.closed[0] as string;
    packId = id;
    paths = { pack: backend.localPath(`chunks/${id}.pack`), idx: backend.localPath(`chunks/${id}.idx`) };
    const entries = readIdx(paths.idx);
    const found = entries.find((e) => Math.floor(e.offset / WINDOW) !== Math.floor((e.offset + RECORD_HEADER + e.storedLength - 1) / WINDOW));
    assert.ok(found, 'a record spans the 8 MiB window boundary');
    straddling = found;
  });
  after(async () => {
    await workers.close();
    t.remove();
  });

  it('finds every record of an intact pack sound', async () => {
    const r = await workers.run({ kind: 'checkPack', pack: paths.pack, idx: paths.idx, id: packId });
    assert.deepEqual(r.bad, []);
    assert.equal(r.checked, count);
  });

  it('names the one damaged record when it straddles two reads, and only it', async () => {
    const fd = fs.openSync(paths.pack, 'r+');
    try {
      // A byte in the second window's part of the record: only a join of both windows finds it.
      const at = straddling.offset + RECORD_HEADER + straddling.storedLength - 1;
      assert.ok(Math.floor(at / WINDOW) > Math.floor(straddling.offset / WINDOW));
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, at);
      fs.writeSync(fd, Buffer.from([b[0] as number ^ 0xff]), 0, 1, at);
      const r = await workers.run({ kind: 'checkPack', pack: paths.pack, idx: paths.idx, id: packId });
      assert.deepEqual(r.bad.map((x) => x.digest), [straddling.digest.toString('hex')]);
      assert.equal(r.checked, count);
      fs.writeSync(fd, b, 0, 1, at);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('takes no index whose entries claim more than a chunk can be: the pack is named, nothing read', async () => {
    const original = fs.readFileSync(paths.idx);
    const entries = readIdx(paths.idx).map((e) => ({ ...e, digest: Buffer.from(e.digest) }));
    try {
      for (const [what, change] of [
        ['a 4 GiB chunk', (e: (typeof entries)[0]) => Object.assign(e, { size: 2 ** 32 - 1, storedLength: 2 ** 31 })],
        ['more stored than the chunk holds', (e: (typeof entries)[0]) => Object.assign(e, { storedLength: e.size + 1 })],
      ] as const) {
        fs.writeFileSync(paths.idx, encodeIdx(entries.map((e, i) => (i === 7 ? change({ ...e }) : e))));
        assert.throws(() => readIdx(paths.idx), /EIO: pack index .*: entry \d+ gives \d+ bytes stored for a chunk of \d+/, what);
        const r = await workers.run({ kind: 'checkPack', pack: paths.pack, idx: paths.idx, id: packId });
        assert.equal(r.checked, 0, what);
        assert.match(r.bad[0]?.reason ?? '', /entry \d+ gives/, what);
      }
    } finally {
      fs.writeFileSync(paths.idx, original);
    }
  });

  it('reports records past the end of a pack cut short', async () => {
    const entries = readIdx(paths.idx).sort((a, b) => a.offset - b.offset);
    const lastTwo = entries.slice(-2);
    // Cut inside the second-to-last record: it and the last one are short.
    fs.truncateSync(paths.pack, (lastTwo[0]?.offset as number) + RECORD_HEADER + 10);
    const r = await workers.run({ kind: 'checkPack', pack: paths.pack, idx: paths.idx, id: packId });
    assert.deepEqual(r.bad.map((x) => x.digest).sort(), lastTwo.map((e) => e.digest.toString('hex')).sort());
    assert.ok(r.bad.every((x) => x.reason === 'its pack is cut short'), JSON.stringify(r.bad));
  });
});
