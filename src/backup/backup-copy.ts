// Owns backup_copy: backups of one repository made backups of another (a second site), moving only
// the chunks the target lacks. A copy keeps the backup's id, time, host and devices, so it is a backup
// of the target like any other: restorable, prunable, and the base of the next incremental there. Chunk
// ids are keyed per repository where it is encrypted: between repositories that name chunks alike
// (both plain, or sharing the secret) a chunk the target has is known by its id; otherwise each chunk is
// read and named anew, except where the backup's index has the same chunk at the same place as the
// newest earlier backup of its host and device already copied (its name there is reused). The packs a
// copy writes are read back from the target and checked before its manifest makes it exist.
import { BlkError } from '../errors.js';
import { ChunkIndex, type ChunkLocation } from '../repository/chunk-index.js';
import { digestsEqual, isZeroDigest } from '../repository/digest.js';
import { chunkCountOf, readIndex, type ReadIndex, writeIndex } from '../repository/digest-index.js';
import { isSameHost } from '../repository/host.js';
import { names } from '../repository/layout.js';
import type { Manifest } from '../repository/manifest.js';
import { decodeRecord, PackWriter, RECORD_HEADER } from '../repository/pack.js';
import { readMarked } from '../repository/pending-deletion.js';
import type { Repository } from '../repository/repository.js';
import { TaskWindow } from '../util/task-window.js';
import { checkPackInStore } from './backup-verify.js';
import type { Progress } from './progress.js';
import { WorkerPool } from './workers/worker-pool.js';

export interface CopyOptions {
  /** One backup; `latest`: the newest; neither: every backup the target lacks. */
  id?: string;
  latest?: boolean;
  progress?: Progress;
}

export interface CopiedBackup {
  id: string;
  /** Chunks read from the source and stored in the target, and their bytes. */
  copiedChunks: number;
  copiedBytes: number;
  /** Chunks the target had already. */
  presentChunks: number;
}

export interface CopyResult {
  copied: CopiedBackup[];
  /** Backups the target holds already (by id): left as they are. */
  present: string[];
}

/** Records of one source pack read together when their gaps are smaller than this. */
const GAP_BYTES = 1024 * 1024;
/** The most one read of a source pack takes (memory per read in flight). */
const RANGE_BYTES = 16 * 1024 * 1024;
const READS_IN_FLIGHT = 4;
/** Where a chunk this copy stores will be: only whether the target knows it matters here. */
const PENDING: ChunkLocation = { pack: '', offset: 0, storedLength: 0, flags: 0, size: 0 };

export async function copyBackups(source: Repository, target: Repository, o: CopyOptions): Promise<CopyResult> {
  if (o.id !== undefined && o.latest) throw new BlkError('EINVAL', 'backup_copy: give --id or --latest, not both');
  return source.inSession('copy', async () => {
    const all = await source.backupIds();
    if (o.id !== undefined) await source.manifest(o.id); // ENOENT for an unknown id
    const ids = o.id !== undefined ? [o.id] : o.latest ? all.slice(-1) : all;
    if (ids.length === 0) throw new BlkError('ENOENT', `${source.location} holds no backup to copy`);
    const there = new Set(await target.backupIds());
    const result: CopyResult = { copied: [], present: ids.filter((id) => there.has(id)) };
    const chunks = await ChunkIndex.loadForReading(source.backend, source.cipher);
    for (const id of ids) if (!there.has(id)) result.copied.push(await copyOne(source, target, chunks, id, o.progress));
    return result;
  });
}

/** Whether two repositories name a chunk alike (then a chunk id of one is the same chunk in the other). */
function namesAlike(a: Repository, b: Repository): boolean {
  const [x, y] = [a.cipher.secret, b.cipher.secret];
  return x === null ? y === null : y !== null && x.equals(y);
}

/** The newest backup of the target made by `manifest`'s host before it, that the source holds too, with a device named `device`. */
async function copiedBase(source: Repository, target: Repository, manifest: Manifest, device: string): Promise<{ id: string; index: string } | null> {
  const inSource = new Set(await source.backupIds());
  for (const id of (await target.backupIds()).reverse()) {
    if (id >= manifest.id || !inSource.has(id)) continue;
    try {
      const m = await target.manifest(id);
      if (!manifest.host || !isSameHost(m.host, manifest.host)) continue;
      const d = m.devices.find((x) => x.name === device);
      if (d) return { id, index: d.index };
    } catch {
      // A damaged manifest is no base; verify reports it.
    }
  }
  return null;
}

async function copyOne(source: Repository, target: Repository, chunks: ChunkIndex, id: string, progress?: Progress): Promise<CopiedBackup> {
  const manifest = await source.manifest(id);
  const session = await target.openSession('backup', id);
  const writer = await target.beginBackup(id, session);
  const packs = new PackWriter(target.backend, target.cipher, target.config.zstdLevel);
  const out: CopiedBackup = { id, copiedChunks: 0, copiedBytes: 0, presentChunks: 0 };
  try {
    const marked = await readMarked(target.backend);
    const known = await ChunkIndex.load(target.backend, target.cipher, { skip: marked.packs });
    const alike = namesAlike(source, target);
    for (const device of manifest.devices) {
      const from = await readIndex(source.backend, names.indexRoot(id, device.index), source.cipher);
      const base = await copiedBase(source, target, manifest, device.name);
      let baseFrom: ReadIndex | null = null;
      let baseTo: ReadIndex | null = null;
      if (base) {
        [baseFrom, baseTo] = await Promise.all([readIndex(source.backend, names.indexRoot(base.id, base.index), source.cipher), readIndex(target.backend, names.indexRoot(base.id, base.index), target.cipher)]);
        if (baseFrom.size !== from.size || baseFrom.chunkSize !== from.chunkSize || baseTo.size !== from.size) baseFrom = baseTo = null;
      }
      const count = chunkCountOf(from.size, from.chunkSize);
      const to = Buffer.alloc(count * 32);
      /** Chunks to read from the source: by source digest, the places on the device that hold it. */
      const wanted = new Map<string, number[]>();
      for (let c = 0; c < count; c++) {
        const at = c * 32;
        if (isZeroDigest(from.digests, at)) continue;
        if (baseFrom && baseTo && digestsEqual(from.digests, at, baseFrom.digests, at)) {
          baseTo.digests.copy(to, at, at, at + 32);
          out.presentChunks++;
        } else if (alike && known.has(from.digests, at)) {
          from.digests.copy(to, at, at, at + 32);
          out.presentChunks++;
        } else {
          const hex = from.digests.toString('hex', at, at + 32);
          const places = wanted.get(hex);
          if (places) places.push(c);
          else wanted.set(hex, [c]);
        }
      }
      progress?.start(`copy ${id} ${device.name}`, [...wanted.values()].reduce((a, p) => a + Math.min(from.chunkSize, from.size - (p[0] as number) * from.chunkSize), 0));
      await readChunks(source, chunks, [...wanted.keys()], (digest, data) => {
        const name = alike ? digest : target.cipher.chunkId(data);
        for (const c of wanted.get(digest.toString('hex')) ?? []) name.copy(to, c * 32);
        progress?.advance(data.length);
        if (known.has(name)) {
          out.presentChunks++;
          return;
        }
        packs.append(Buffer.from(name), data);
        known.add(name, 0, PENDING);
        out.copiedChunks++;
        out.copiedBytes += data.length;
      });
      progress?.done();
      const { root } = await writeIndex(target.backend, target.cipher, { size: from.size, chunkSize: from.chunkSize, digests: to }, { marked: marked.pages });
      await writer.addIndexRoot(device.index, root);
    }
    await packs.close();
    await checkLanded(target, packs.closed);
    await writer.commit(manifest);
    return out;
  } finally {
    await writer.abandon();
    await session.close();
  }
}

/**
 * Reads the chunks `digests` names from the source, each opened and checked against its digest, and
 * hands each to `take`: records of one pack read together, a few reads at a time.
 */
async function readChunks(source: Repository, chunks: ChunkIndex, digests: string[], take: (digest: Buffer, data: Uint8Array) => void): Promise<void> {
  const byPack = new Map<string, Array<{ digest: Buffer; where: ChunkLocation }>>();
  for (const hex of digests) {
    const digest = Buffer.from(hex, 'hex');
    const where = chunks.require(digest);
    const list = byPack.get(where.pack);
    if (list) list.push({ digest, where });
    else byPack.set(where.pack, [{ digest, where }]);
  }
  const window = new TaskWindow(READS_IN_FLIGHT);
  // take() is synchronous and keeps nothing of what it is handed: one buffer serves every chunk.
  let scratch = new Uint8Array(0);
  const readRange = async (pack: string, records: Array<{ digest: Buffer; where: ChunkLocation }>): Promise<void> => {
    const first = (records[0] as { where: ChunkLocation }).where.offset;
    const last = records.at(-1) as { where: ChunkLocation };
    const bytes = Buffer.allocUnsafe(last.where.offset + RECORD_HEADER + last.where.storedLength - first);
    if ((await source.backend.readRange(names.pack(pack), first, bytes)) !== bytes.length) throw new BlkError('EIO', `pack ${pack} of ${source.location} is cut short; run backup_verify`);
    for (const { digest, where } of records) {
      const at = where.offset - first + RECORD_HEADER;
      if (scratch.length < where.size) scratch = new Uint8Array(where.size);
      const data = scratch.subarray(0, where.size);
      const problem = decodeRecord(bytes.subarray(at, at + where.storedLength), where.flags, digest, data, source.cipher);
      if (problem) throw new BlkError('EIO', `chunk ${digest.toString('hex')} in pack ${pack} of ${source.location}: ${problem}; nothing copied (run backup_verify there)`);
      take(digest, data);
    }
  };
  try {
    for (const [pack, records] of byPack) {
      records.sort((a, b) => a.where.offset - b.where.offset);
      let range: typeof records = [];
      for (const r of records) {
        const start = (range[0]?.where.offset ?? r.where.offset);
        const end = r.where.offset + RECORD_HEADER + r.where.storedLength;
        const previous = range.at(-1);
        const gap = previous ? r.where.offset - (previous.where.offset + RECORD_HEADER + previous.where.storedLength) : 0;
        if (range.length > 0 && (gap > GAP_BYTES || end - start > RANGE_BYTES)) {
          await window.add(readRange(pack, range));
          range = [];
        }
        range.push(r);
      }
      if (range.length > 0) await window.add(readRange(pack, range));
    }
  } finally {
    await window.settle();
  }
  await window.drain();
}

/** Reads back the packs a copy wrote from the target and checks every record: EIO naming what did not land whole. */
async function checkLanded(target: Repository, packs: string[]): Promise<void> {
  if (packs.length === 0) return;
  const workers = new WorkerPool('verify');
  try {
    await workers.runOnAll({ kind: 'cipher', secret: target.cipher.secret });
    for (const id of packs) {
      const bad = (await checkPackInStore(target.backend, workers, id)).bad[0];
      if (bad) throw new BlkError('EIO', `pack ${id} did not land whole in ${target.location}: ${bad.digest ? `chunk ${bad.digest}: ` : ''}${bad.reason}; the copy is not committed`);
    }
  } finally {
    await workers.close();
  }
}
