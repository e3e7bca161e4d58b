// Owns backup_create: one snapshot across the devices (owned by this connection, so it never outlives
// the backup), each image read over NBD (only the chunks CBT says changed, when the previous backup
// of the device is of the same generation), chunks hashed, compressed and stored by worker threads,
// indexes and chunks made durable, and the manifest written last.
import * as os from 'node:os';
import * as path from 'node:path';
import { Cbt } from '../client/cbt.js';
import type { BlksnapClient } from '../client/connection.js';
import type { NbdTlsOptions } from '../client/nbd-client.js';
import * as api from '../control/protocol.js';
import { BlkError, toBlkError } from '../errors.js';
import { backup as params } from '../params.js';
import { ChunkIndex, type ChunkLocation } from '../repository/chunk-index.js';
import { isZeroDigest } from '../repository/digest.js';
import { chunkCountOf, decodeIndexRoot, type ReadIndex, readIndex, writeIndex } from '../repository/digest-index.js';
import { indexFileOf, names, newBackupId } from '../repository/layout.js';
import { type BackupHost, isSameHost, thisHost } from '../repository/host.js';
import type { ManifestDevice } from '../repository/manifest.js';
import { partBufferBytes } from '../repository/part-stream.js';
import type { BackupWriter, Repository } from '../repository/repository.js';
import { readMarked } from '../repository/pending-deletion.js';
import { s3Requests } from '../repository/s3-backend.js';
import { settleAll } from '../util/settle.js';
import { SharedSlots } from '../util/shared-slots.js';
import { TaskWindow } from '../util/task-window.js';
import { allocatedChunks, inFronts, readRuns, runsOf } from './image-reader.js';
import type { Progress } from './progress.js';
import { PackUploads } from './pack-uploads.js';
import type { WirePiece, CreateResult as WorkerResult } from './workers/tasks.js';
import { WorkerPool } from './workers/worker-pool.js';

/** Where a chunk this backup is storing will be: only whether it is known matters here. */
const PENDING: ChunkLocation = { pack: '', offset: 0, storedLength: 0, flags: 0, size: 0 };

export interface CreateOptions {
  devices: string[];
  /** Difference storage of the backup's snapshot (default: a directory's unnamed file in the repository). */
  diffStorage?: string;
  /** Its largest size (default 1/4 of the devices' total, at least 1 GiB). */
  limit?: number;
  /** Read everything, even where an incremental could be made. */
  full?: boolean;
  /** Places of a device read at once (default params.backup.readFronts; 1 suits a rotating disk). */
  readFronts?: number;
  /** The image's NBD URI from the daemon's (e.g. over its TCP listener); default: the daemon's Unix socket. */
  imageUri?: (image: api.ImageInfo) => string;
  tls?: NbdTlsOptions;
  progress?: Progress;
  /** The host the backup is recorded under (default: the hostname): its incremental base is the newest backup of the same host and device. */
  host?: string;
  /**
   * Trim what is read on the image: the snapshot releases those chunks' space in its difference
   * storage, so a long backup of a busy device needs less of it.
   */
  discardAfterRead?: boolean;
  /** Runs after the take, before any read: the images as the backup will read them (a test copies them). */
  afterTake?: (images: Array<{ device: string; uri: string }>) => Promise<void>;
}

export interface CreateResult {
  id: string;
  time: string;
  host: BackupHost;
  /** Per device: `storedBytes` is what its new chunks added to packs (record headers included), `indexBytes` its index pages and root. */
  devices: Array<Pick<ManifestDevice, 'name' | 'size' | 'mode' | 'generationId' | 'changesNumber' | 'readBytes' | 'storedBytes'> & { indexBytes: number }>;
  warnings: string[];
  /** S3 requests made, by operation, in all threads (a repository in a bucket only). */
  requests?: Record<string, number>;
}

/** Counts by name added up, less what `before` had counted already. */
function sumCounts(counts: Array<Record<string, number>>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of counts) for (const [k, n] of Object.entries(c)) out[k] = (out[k] ?? 0) + n;
  for (const [k, n] of Object.entries(before)) out[k] = (out[k] ?? 0) - n;
  return out;
}

/**
 * The newest complete backup of each of `devices` made by `host` (the incremental base is per host
 * and device), with its index, when it can be read: manifests read newest first until each has one.
 */
async function previousBackups(repo: Repository, devices: string[], host: BackupHost): Promise<Map<string, { id: string; device: ManifestDevice }>> {
  const out = new Map<string, { id: string; device: ManifestDevice }>();
  for (const id of (await repo.backupIds()).reverse()) {
    if (devices.every((d) => out.has(d))) break;
    try {
      const manifest = await repo.manifest(id);
      if (!isSameHost(manifest.host, host)) continue;
      for (const device of manifest.devices) if (!out.has(device.name)) out.set(device.name, { id, device });
    } catch {
      // A damaged manifest is not a base for an incremental; verify reports it.
    }
  }
  return out;
}

export async function createBackup(repo: Repository, client: BlksnapClient, given: CreateOptions): Promise<CreateResult> {
  if (given.devices.length === 0) throw new BlkError('EINVAL', 'backup_create: give at least one --device');
  // A backup knows a device by its name, whichever way it was given: its base, its restores and its retention follow the name.
  const deviceNames = await Promise.all(given.devices.map(async (d) => (await client.call(api.DeviceInfoOf, { device: d.includes('/') ? path.resolve(d) : d })).name));
  if (new Set(deviceNames).size !== deviceNames.length) throw new BlkError('EINVAL', `backup_create: a device is given twice (${given.devices.join(', ')})`);
  const o = { ...given, devices: deviceNames };
  const requestsBefore = s3Requests();
  const time = new Date();
  const id = newBackupId(time);
  // Before anything is read: what a prune marks from now on stays while this backup runs.
  const session = await repo.openSession('backup', id);
  const workers = new WorkerPool('create', params.createWorkersPerCore * os.availableParallelism());
  let snapshotId: string | null = null;
  let writer: BackupWriter | null = null;
  // A store that takes objects in parts gets the workers' packs part by part from this thread.
  const uploads = repo.backend.startUpload ? new PackUploads(repo.backend, params.s3Uploads, params.s3UnsentBytes) : null;
  // The parts the workers fill and this thread sends, in memory both see: enough slots for what may
  // wait to be sent and what the workers fill meanwhile (a worker finding none takes memory of its own).
  const partSlots = uploads ? SharedSlots.create(Math.ceil(params.s3UnsentBytes / params.s3PartBytes) + 3 * workers.size, partBufferBytes(params.s3PartBytes)) : null;
  /** Sends the pieces of a worker's answer; a part's slot is free again once it is sent. */
  const upload =
    uploads && partSlots
      ? (wire: WirePiece[]): Promise<void> =>
          uploads.add(
            wire.map((p) => (p.kind === 'part' ? { ...p, data: partSlots.resolve(p.data) } : p)),
            (data) => {
              const ref = partSlots.refOf(data);
              if (ref) partSlots.release(ref.slot);
            },
          )
      : null;
  let committed = false;
  /** The packs' finish, once begun (by the last device, or after it). */
  const finishing: { done: Promise<Array<Extract<WorkerResult, { kind: 'finish' }>>> | null } = { done: null };
  try {
    writer = await repo.beginBackup(id, session);
    const host = thisHost(o.host);
    // Three things at once, none waiting on another: the workers load, the snapshot is taken, and
    // what the repository holds is read (its backups, markings and chunk index, and the first
    // device's base index: in a bucket, requests).
    const taking = (async () => {
      const sizes = await Promise.all(o.devices.map((d) => client.call(api.CbtGetInfo, { device: d }).then((i) => i.deviceCapacity)));
      const total = sizes.reduce((a, b) => a + b, 0);
      const created = await client.call(api.SnapshotCreate, {
        devices: o.devices,
        diffStorage: o.diffStorage ?? repo.backend.localPath('') ?? os.tmpdir(),
        limit: o.limit ?? Math.max(2 ** 30, Math.ceil(total / 4 / 4096) * 4096),
        ownedByConnection: true,
      });
      snapshotId = created.id;
      const taken = await client.call(api.SnapshotTake, { id: created.id });
      if (o.afterTake) {
        const images = await Promise.all(o.devices.map(async (device) => {
          const image = (await client.call(api.SnapshotGetInfo, { device })).image;
          if (!image) throw new BlkError('EIO', `device ${device} has no snapshot image`);
          return { device, uri: o.imageUri ? o.imageUri(image) : image.uri };
        }));
        await o.afterTake(images);
      }
      return taken;
    })();
    const reading = (async () => {
      const previous = await previousBackups(repo, o.devices, host);
      const first = o.full ? undefined : previous.get(o.devices[0] as string);
      // Heard where it is used (a base that cannot be read makes a full backup); no unhandled rejection meanwhile.
      const firstBase = first ? readIndex(repo.backend, names.indexRoot(first.id, first.device.index), repo.cipher) : null;
      firstBase?.catch(() => undefined);
      // What a prune marked for deletion is not reused (its chunks are stored again, its pages written again).
      const marked = await readMarked(repo.backend);
      // What the repository holds: a chunk found here is not stored again.
      const known = await ChunkIndex.load(repo.backend, repo.cipher, { skip: marked.packs });
      return { previous, firstBase, marked, known };
    })();
    const loading = (async () => {
      await workers.runOnAll({ kind: 'cipher', secret: repo.cipher.secret });
      if (partSlots) await workers.runOnAll({ kind: 'partSlots', slots: partSlots.handle });
    })();
    const [taken, { previous, firstBase, marked, known }] = await settleAll([taking, reading, loading]);
    const entries: Array<ManifestDevice & { indexBytes: number }> = [];
    // Where the repository retains objects (S3 Object Lock): what this backup reuses, to extend.
    const retain = repo.backend.spec.kind === 's3' && repo.backend.spec.objectLock ? new Set<string>() : null;
    // Packs put in place (synced, indexed; in a bucket, their last parts sent): begun once the last
    // device is read, beside the writing of its index. The commit makes them, the pages and the
    // index roots durable before the manifest makes the backup exist.
    const finish = (): Promise<Array<Extract<WorkerResult, { kind: 'finish' }>>> => {
      if (!finishing.done) {
        finishing.done = (async () => {
          const done = await workers.runOnAll({ kind: 'finish' });
          if (upload) {
            for (const f of done) await upload(f.pieces);
            await uploads?.drain();
          }
          return done;
        })();
        // Awaited below; a failure while the index is written comes back there, never unhandled.
        finishing.done.catch(() => undefined);
      }
      return finishing.done;
    };
    for (const [i, name] of o.devices.entries()) {
      const base = previous.get(name);
      const prefetched = base ? { ...base, index: i === 0 ? firstBase : null } : null;
      entries.push(await backupDevice(repo, client, workers, { known, markedPages: marked.pages, retain, upload }, o, name, prefetched, writer, i === o.devices.length - 1 ? finish : null));
    }
    const finished = await finish();
    if (retain) await repo.backend.extendRetention?.([...retain]);
    const manifest = { version: 1 as const, id, time: time.toISOString(), host, devices: entries.map(({ indexBytes: _i, ...device }) => device) };
    await writer.commit(manifest);
    committed = true;
    const requests = repo.backend.spec.kind === 's3' ? sumCounts([s3Requests(), ...finished.map((f) => f.requests)], requestsBefore) : null;
    return {
      id,
      time: manifest.time,
      host,
      devices: entries.map(({ name, size, mode, generationId, changesNumber, readBytes, storedBytes, indexBytes }) => ({ name, size, mode, generationId, changesNumber, readBytes, storedBytes, indexBytes })),
      warnings: taken.warnings,
      ...(requests ? { requests } : {}),
    };
  } finally {
    if (!committed) {
      // Nothing is sent after the abort: a finish begun must have handed on all it will.
      await finishing.done?.catch(() => undefined);
      await uploads?.abort();
    }
    await writer?.abandon();
    if (snapshotId !== null) await client.call(api.SnapshotDestroy, { id: snapshotId }).catch(() => undefined);
    await workers.close();
    await session.close();
  }
}

/** The packs (found before this backup began) and index pages a device's backup needs, added to `into`. */
function neededObjects(known: ChunkIndex, digests: Buffer, root: Buffer, rootFile: string, into: Set<string>): void {
  for (let at = 0; at < digests.length; at += 32) {
    if (isZeroDigest(digests, at)) continue;
    const e = known.find(digests, at);
    const pack = e >= 0 ? known.location(e).pack : '';
    if (pack !== '') into.add(names.pack(pack)).add(names.packIndex(pack));
  }
  for (const page of decodeIndexRoot(root, rootFile).pages) into.add(names.page(page));
}

async function backupDevice(
  repo: Repository,
  client: BlksnapClient,
  workers: WorkerPool<'create'>,
  { known, markedPages, retain, upload }: { known: ChunkIndex; markedPages: Set<string>; retain: Set<string> | null; upload: ((wire: WirePiece[]) => Promise<void>) | null },
  o: CreateOptions,
  name: string,
  /** The device's incremental base, with its index where it is being read already. */
  previous: { id: string; device: ManifestDevice; index: Promise<ReadIndex> | null } | null,
  writer: BackupWriter,
  /** Called once the device is read and stored, before its index is written (the last device's: the packs' finish begins). */
  beforeIndex: (() => unknown) | null,
): Promise<ManifestDevice & { indexBytes: number }> {
  const info = await client.call(api.CbtGetInfo, { device: name });
  const snap = await client.call(api.SnapshotGetInfo, { device: name });
  if (!snap.image) throw new BlkError('EIO', `device ${name} has no snapshot image`);
  const uri = o.imageUri ? o.imageUri(snap.image) : snap.image.uri;
  const size = info.deviceCapacity;
  const chunkSize = info.blockSize;
  const count = chunkCountOf(size, chunkSize);
  let digests: Buffer = Buffer.alloc(count * 32);
  /** Index pages read and checked here (the base's): not read again before they are used. */
  const checkedPages = new Set<string>();
  let mode: 'full' | 'incremental' = 'full';
  let chunks: number[] | null = null;
  const p = previous?.device;
  if (!o.full && p && p.generationId === info.generationId && p.size === size && p.chunkSize === chunkSize && p.changesNumber < info.changesNumber) {
    try {
      const base = await (previous?.index ?? readIndex(repo.backend, names.indexRoot((previous as { id: string }).id, p.index), repo.cipher));
      digests = base.digests;
      for (const page of base.pages) checkedPages.add(page);
      const map = await new Cbt(client, name).readMap();
      chunks = [];
      for (let c = 0; c < count; c++) if ((map[c] as number) > p.changesNumber) chunks.push(c);
      mode = 'incremental';
    } catch (e) {
      o.progress?.note(`the previous backup of ${name} cannot be read (${toBlkError(e).message}): a full backup`);
      digests = Buffer.alloc(count * 32);
    }
  }
  if (chunks === null) chunks = await allocatedChunks(uri, size, chunkSize, o.tls);
  const runs = inFronts(runsOf(chunks, Math.max(1, Math.floor(params.readBytes / chunkSize))), o.readFronts ?? params.readFronts);
  const planned = chunks.reduce((a, c) => a + Math.min(chunkSize, size - c * chunkSize), 0);
  o.progress?.start(`${name} (${mode})`, planned);
  let readBytes = 0;
  let storedBytes = 0;
  // Bounded memory (6 runs of at most 1 MiB per worker), yet enough queued that a worker never
  // waits for the main thread between a run's hash and its store (docs/performance.md, design choices).
  const waiting = workers.size * 6;
  const storing = new TaskWindow(waiting);
  let taskId = 0;
  // Reads land in slots of memory shared with the workers, each slot free again once its chunks are
  // stored: memory used again stays backed (a new buffer per read cost a fresh page per 4 KiB,
  // docs/performance.md), and no buffer moves between threads. A slot for every read in
  // flight and every task in the window: one is always free when a read starts.
  const slotBytes = Math.max(1, Math.floor(params.readBytes / chunkSize)) * chunkSize;
  const slotCount = params.connections * params.requestsPerConnection + waiting + 1;
  const slots = new SharedArrayBuffer(Math.min(runs.length, slotCount) * slotBytes);
  const freeSlots = Array.from({ length: Math.min(runs.length, slotCount) }, (_, i) => i);
  await workers.runOnAll({ kind: 'share', buffer: slots });
  const bufferFor = (length: number): Buffer | undefined => {
    const slot = freeSlots.pop();
    return slot === undefined ? undefined : Buffer.from(slots, slot * slotBytes, length);
  };
  await readRuns({ uri, size, chunkSize, runs, bufferFor, ...(o.tls ? { tls: o.tls } : {}), ...(o.discardAfterRead ? { discardAfterRead: true } : {}) }, async (run, data) => {
    const bytes = data.length;
    readBytes += bytes;
    const lengths = Array.from({ length: run.count }, (_, i) => Math.min(chunkSize, size - (run.first + i) * chunkSize));
    const id = taskId++;
    const on = workers.pick();
    // A read no slot was free for (none, by the count above) brings its own buffer, moved to the worker.
    const isShared = data.buffer === slots;
    const hashing = isShared
      ? workers.run({ kind: 'hash', id, data: { at: data.byteOffset, length: bytes }, lengths }, [], on)
      : workers.run({ kind: 'hash', id, data, lengths }, [data.buffer as ArrayBuffer], on);
    const task = hashing.then(async (h) => {
      // Every chunk of the run gets its digest: a chunk now zero gets the zero digest.
      Buffer.from(h.digests.buffer, h.digests.byteOffset, h.digests.byteLength).copy(digests, run.first * 32);
      // New to the repository (and to this backup so far): stored by the worker that holds the bytes.
      const which: number[] = [];
      for (let i = 0; i < run.count; i++) {
        if (isZeroDigest(h.digests, i * 32) || known.has(h.digests, i * 32)) continue;
        known.add(h.digests, i * 32, PENDING);
        which.push(i);
      }
      const stored = await workers.run({ kind: 'store', id, which, repository: repo.backend.spec, level: repo.config.zstdLevel }, [], on);
      storedBytes += stored.storedBytes;
      if (isShared) freeSlots.push(data.byteOffset / slotBytes);
      if (upload && stored.pieces.length > 0) await upload(stored.pieces);
      o.progress?.advance(bytes);
    });
    await storing.add(task);
  });
  await storing.drain();
  beforeIndex?.();
  const { root, pageBytes } = await writeIndex(repo.backend, repo.cipher, { size, chunkSize, digests }, { checked: checkedPages, marked: markedPages });
  await writer.addIndexRoot(indexFileOf(name), root);
  if (retain) neededObjects(known, digests, root, indexFileOf(name), retain);
  o.progress?.done();
  return { name, size, chunkSize, mode, generationId: info.generationId, changesNumber: info.changesNumber, readBytes, storedBytes, index: indexFileOf(name), indexBytes: pageBytes + root.length };
}
