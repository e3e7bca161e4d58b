// Owns backup_restore: a device of a backup written to a file (sparse: zero chunks stay holes), a block
// device, an NBD export, or an attached device of the daemon, where a backup of the device's own
// generation is a rollback: only the chunks written since the backup are written back. Every chunk's
// digest is checked (in worker threads) before it is written.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BlksnapClient } from '../client/connection.js';
import { NbdClient, type NbdTlsOptions } from '../client/nbd-client.js';
import * as api from '../control/protocol.js';
import { BlkError, toBlkError } from '../errors.js';
import { openDirectSync } from '../os/fd-io.js';
import { DIRECT_ALIGNMENT } from '../os/koffi.js';
import { fallocate, sizeOfBlockDevice } from '../os/libc.js';
import { backup as params } from '../params.js';
import { ReplacementFile } from '../os/replacement-file.js';
import { ChunkIndex, type LoadItem } from '../repository/chunk-index.js';
import { isZeroDigest } from '../repository/digest.js';
import { chunkCountOf, readIndex } from '../repository/digest-index.js';
import { names } from '../repository/layout.js';
import type { ManifestDevice } from '../repository/manifest.js';
import type { Repository } from '../repository/repository.js';
import { SharedSlots } from '../util/shared-slots.js';
import { TaskWindow } from '../util/task-window.js';
import { type ChunkRun, inFronts, runsOf } from './image-reader.js';
import { packRanges } from './pack-ranges.js';
import type { Progress } from './progress.js';
import { type RepeatedChunks, repeatedChunks } from './repeated-chunks.js';
import { type Daemon, type RestoreTarget, resolveTarget } from './restore-target.js';
import type { FetchedRange } from './workers/tasks.js';
import { WorkerPool } from './workers/worker-pool.js';

export interface RestoreOptions {
  id: string;
  /** The device of the backup: its name, or (with a '/') the path of the attached device it was made from. */
  device: string;
  /** device:NAME (an attached device), an NBD URI, or a path: a file or block device (see restore-target.ts). */
  to: string;
  /** The daemon, to find attached devices (and roll them back); null: it could not be reached (`daemonError` says why). */
  client?: BlksnapClient | null;
  daemonError?: string;
  /** Write an existing target even though no daemon could say whether it is attached. */
  offline?: boolean;
  tls?: NbdTlsOptions;
  progress?: Progress;
}

export interface RestoreResult {
  writtenBytes: number;
  skippedBytes: number;
  /**
   * "file", "block device", "nbd", "device" (an attached device, through the daemon), or
   * "rollback" (an attached device of the backup's generation: only what changed since it).
   */
  mode: 'file' | 'block device' | 'nbd' | 'device' | 'rollback';
  /** The attached device written, for "device" and "rollback". */
  device?: string;
}

/** The name a backup knows a device by: the name itself, or the name of the attached device a path (with a '/') leads to. */
export async function backupDeviceName(device: string, client: BlksnapClient | null | undefined): Promise<string> {
  if (!device.includes('/')) return device;
  if (!client) throw new BlkError('ENOENT', `--device ${device} is a path: blksnapd must be reachable to say which attached device it is (or give the device's name)`);
  return (await client.call(api.DeviceInfoOf, { device: path.resolve(device) })).name;
}

export async function restoreBackup(repo: Repository, o: RestoreOptions): Promise<RestoreResult> {
  // Started first: the threads load their modules while this one reads the indexes.
  const workers = new WorkerPool('restore');
  try {
    const daemon: Daemon = o.client ? { client: o.client } : { unreachable: o.daemonError ?? 'none was asked' };
    const deviceName = await backupDeviceName(o.device, o.client);
    const target = await resolveTarget(o.to, daemon, { offline: o.offline ?? false });
    // The session before anything of the backup is read: what a prune marks meanwhile stays until it ends.
    return await repo.inSession('restore', async () => {
      const manifest = await repo.manifest(o.id);
      const entry = manifest.devices.find((d) => d.name === deviceName);
      if (!entry) throw new BlkError('ENOENT', `backup ${o.id} has no device ${deviceName} (it has ${manifest.devices.map((d) => d.name).join(', ')})`);
      const index = await readIndex(repo.backend, names.indexRoot(o.id, entry.index), repo.cipher);
      return restoreInSession(repo, workers, o, entry, index, target);
    });
  } finally {
    // Each worker closes the packs it opened (a library caller's process goes on).
    await workers.runOnAll({ kind: 'closePacks' }).catch(() => undefined);
    await workers.close();
  }
}

async function restoreInSession(repo: Repository, workers: WorkerPool<'restore'>, o: RestoreOptions, entry: ManifestDevice, index: Index, target: RestoreTarget): Promise<RestoreResult> {
  const packed = await ChunkIndex.loadForReading(repo.backend, repo.cipher);
  // The workers read a directory's packs by descriptor, and an object store's by range, span by span
  // as the restore goes (no pack waits to be fetched whole, and the cache needs no room for them).
  return restoreFromPacks(repo, workers, o, entry, index, target, packed);
}

async function restoreFromPacks(repo: Repository, workers: WorkerPool<'restore'>, o: RestoreOptions, entry: ManifestDevice, index: Index, target: RestoreTarget, packed: ChunkIndex): Promise<RestoreResult> {
  const count = chunkCountOf(index.size, index.chunkSize);
  if (target.kind === 'device' || target.kind === 'nbd') {
    const uri = target.kind === 'device' ? target.device.uri : target.uri;
    let chunks: number[] = Array.from({ length: count }, (_, c) => c);
    let mode: RestoreResult['mode'] = target.kind;
    if (target.kind === 'device' && o.client) {
      const info = await o.client.call(api.CbtGetInfo, { device: target.device.name });
      if (info.generationId === entry.generationId && info.deviceCapacity === index.size && info.blockSize === index.chunkSize) {
        chunks = await changedSince(uri, index.size, index.chunkSize, entry.changesNumber, o.tls);
        mode = 'rollback';
      }
    }
    const written = await restoreOverNbd(repo, workers, packed, uri, index, chunks, o);
    return { writtenBytes: written, skippedBytes: index.size - written, mode, ...(target.kind === 'device' ? { device: target.device.name } : {}) };
  }
  return target.kind === 'block' ? await restoreToBlockDevice(repo, workers, packed, target.path, index, count, o) : await restoreToFile(repo, workers, packed, target.path, index, count, o);
}

/** Chunks of an attached device written after snapshot `k` (its active map over NBD, x-blksnap:cbt). */
async function changedSince(uri: string, size: number, chunkSize: number, k: number, tls?: NbdTlsOptions): Promise<number[]> {
  const client = await NbdClient.connect(uri, { metaContexts: ['x-blksnap:cbt'], ...(tls ? { tls } : {}) });
  try {
    if (!client.contexts.has('x-blksnap:cbt')) throw new BlkError('EOPNOTSUPP', `${uri} offers no x-blksnap:cbt`);
    const out: number[] = [];
    for (const e of await client.extents('x-blksnap:cbt', 0, size)) {
      if (e.flags <= k) continue;
      for (let c = Math.floor(e.offset / chunkSize); c * chunkSize < e.offset + e.length; c++) if (out.at(-1) !== c) out.push(c);
    }
    return out;
  } finally {
    await client.close();
  }
}

type Index = { size: number; chunkSize: number; digests: Buffer };

/** The chunks of `wanted` grouped by content (repeated-chunks.ts). */
function repeatedIn(wanted: number[], index: Index): RepeatedChunks {
  return repeatedChunks(wanted, index.digests, (c) => Math.min(index.chunkSize, index.size - c * index.chunkSize));
}

/** The items, each with the offsets of the later chunks holding its content: written there too. */
function withCopies(items: LoadItem[], copiesOf: (c: number) => number[], chunkSize: number): LoadItem[] {
  for (const item of items) {
    const copies = copiesOf(item.offset / chunkSize);
    if (copies.length > 0) item.copies = copies.map((c) => c * chunkSize);
  }
  return items;
}

/**
 * Starts `start(items)` for each run of chunk loads (with their copies), a few tasks per worker in
 * flight; returns once all are done, and on a failure only once none is still running (what they
 * write through must not close under them).
 */
async function inWindow(repo: Repository, workers: WorkerPool<'restore'>, chunks: ChunkIndex, index: Index, runs: Iterable<ChunkRun>, repeated: RepeatedChunks, start: (items: LoadItem[]) => Promise<void>): Promise<void> {
  // Two runs per worker decode while two more are being written.
  const inFlight = new TaskWindow(workers.size * 4);
  try {
    for (const run of runs) await inFlight.add(start(withCopies(chunks.loadItems(repo.backend, index, run.first, run.count), repeated.copiesOf, index.chunkSize)));
  } finally {
    await inFlight.settle();
  }
  await inFlight.drain();
}

async function restoreOverNbd(repo: Repository, workers: WorkerPool<'restore'>, chunks: ChunkIndex, uri: string, index: Index, wanted: number[], o: RestoreOptions): Promise<number> {
  const client = await NbdClient.connect(uri, o.tls ? { tls: o.tls } : {});
  try {
    if (client.isReadOnly) throw new BlkError('EROFS', `${uri} is read-only`);
    if (client.size < index.size) throw new BlkError('ENOSPC', `${uri} holds ${client.size} bytes, the backup ${index.size}`);
    const repeated = repeatedIn(wanted, index);
    const runs = runsOf(repeated.firsts, Math.max(1, Math.floor(params.readBytes / index.chunkSize)));
    o.progress?.start(`restore to ${uri}`, wanted.length * index.chunkSize);
    let written = 0;
    await inWindow(repo, workers, chunks, index, runs, repeated, async (items) => {
      const r = await workers.run({ kind: 'load', items, secret: repo.cipher.secret, ...(repo.backend.spec.kind === 's3' ? { repository: repo.backend.spec } : {}) });
      let bytes = 0;
      await Promise.all(r.data.flatMap((d, i) => {
        const item = items[i] as LoadItem;
        return [item.offset, ...(item.copies ?? [])].map((at) => {
          bytes += d.length;
          return item.where === null ? client.writeZeroes(at, d.length) : client.write(at, d);
        });
      }));
      written += bytes;
      o.progress?.advance(bytes);
    });
    await client.flush();
    o.progress?.done();
    return written;
  } finally {
    await client.close();
  }
}

/**
 * Allocates a file's blocks under the chunks the restore writes (zero chunks stay holes), before any
 * write: a direct write that must allocate takes the inode's lock for itself (ext4), so the writes
 * would reach the disk one at a time; allocating as each task writes waits for the writes in
 * flight (docs/performance.md, design choices). Where the filesystem cannot, writes allocate.
 */
async function allocateStretches(fd: number, wanted: number[], index: Index): Promise<void> {
  for (const run of runsOf(wanted, Number.MAX_SAFE_INTEGER)) {
    const offset = run.first * index.chunkSize;
    try {
      await fallocate(fd, 0, offset, Math.min(run.count * index.chunkSize, index.size - offset));
    } catch {
      return;
    }
  }
}

/** Opens `target` a second time with O_DIRECT; null where the file system refuses it (tmpfs) or chunks are not whole pages. */
function openDirect(target: string, chunkSize: number): number | null {
  if (chunkSize % DIRECT_ALIGNMENT !== 0) return null;
  try {
    return openDirectSync(target, fs.constants.O_WRONLY);
  } catch {
    return null; // any other refusal too: the restore writes through the page cache
  }
}

/** Writes a device of a backup to a block device, opened exclusively: one that is mounted or held by another process is refused (EBUSY). */
async function restoreToBlockDevice(repo: Repository, workers: WorkerPool<'restore'>, chunks: ChunkIndex, target: string, index: Index, count: number, o: RestoreOptions): Promise<RestoreResult> {
  let fd: number;
  try {
    fd = fs.openSync(target, fs.constants.O_WRONLY | fs.constants.O_EXCL);
  } catch (e) {
    const err = toBlkError(e);
    throw new BlkError(err.code, err.code === 'EBUSY' ? `${target} is mounted or held by another process` : `cannot open ${target}: ${err.message}`);
  }
  let directFd: number | null = null;
  try {
    if (sizeOfBlockDevice(fd) < index.size) throw new BlkError('ENOSPC', `${target} is smaller than the backup (${index.size} bytes)`);
    directFd = openDirect(target, index.chunkSize);
    const written = await writeChunks(repo, workers, chunks, index, Array.from({ length: count }, (_, c) => c), { fd, directFd, writeZeros: true }, `restore to ${target}`, o);
    fs.fsyncSync(fd);
    return { writtenBytes: written, skippedBytes: index.size - written, mode: 'block device' };
  } finally {
    if (directFd !== null) fs.closeSync(directFd);
    fs.closeSync(fd);
  }
}

/**
 * Writes a device of a backup to a file: into a new, unnamed file beside the target (sparse: zero
 * chunks stay holes), put in place of the target only once it is whole and durable. A restore
 * that fails or is killed leaves the old file as it was and nothing of the new one.
 */
async function restoreToFile(repo: Repository, workers: WorkerPool<'restore'>, chunks: ChunkIndex, target: string, index: Index, count: number, o: RestoreOptions): Promise<RestoreResult> {
  const replacement = await ReplacementFile.create(target);
  let directFd: number | null = null;
  try {
    const fd = replacement.fd;
    fs.ftruncateSync(fd, index.size); // zero chunks stay holes
    directFd = openDirect(replacement.reopenPath, index.chunkSize);
    const wanted: number[] = [];
    for (let c = 0; c < count; c++) if (!isZeroDigest(index.digests, c * 32)) wanted.push(c);
    if (directFd !== null) await allocateStretches(fd, wanted, index);
    const written = await writeChunks(repo, workers, chunks, index, wanted, { fd, directFd, writeZeros: false }, `restore to ${target}`, o);
    // After every task settled (writeChunks waits for them): nothing writes through a descriptor that closes.
    if (directFd !== null) fs.closeSync(directFd);
    directFd = null;
    await replacement.commit();
    return { writtenBytes: written, skippedBytes: index.size - written, mode: 'file' };
  } finally {
    if (directFd !== null) fs.closeSync(directFd);
    await replacement.close();
  }
}

type WriteTo = { fd: number; directFd: number | null; writeZeros: boolean };

/** Loads, checks and writes chunks `wanted` through worker threads, in fronts; the bytes written. */
async function writeChunks(repo: Repository, workers: WorkerPool<'restore'>, chunks: ChunkIndex, index: Index, wanted: number[], to: WriteTo, label: string, o: RestoreOptions): Promise<number> {
  o.progress?.start(label, wanted.length * index.chunkSize);
  let written = 0;
  const write = async (items: LoadItem[], fetched?: FetchedRange, transfer: ArrayBuffer[] = []): Promise<void> => {
    const task = { kind: 'write' as const, items, secret: repo.cipher.secret, fd: to.directFd ?? to.fd, direct: to.directFd !== null, bufferedFd: to.fd, writeZeros: to.writeZeros };
    const r = await workers.run(fetched ? { ...task, fetched } : task, transfer);
    written += r.writtenBytes;
    o.progress?.advance(r.writtenBytes);
  };
  if (repo.backend.spec.kind === 's3') await writeByPack(repo, workers, chunks, index, wanted, write);
  else {
    const repeated = repeatedIn(wanted, index);
    // In fronts, as a backup reads: stretches of stored data (bound by the disk's reads and writes) go
    // beside compressed ones (bound by decompressing and hashing), so neither leaves the other idle.
    const runs = inFronts(runsOf(repeated.firsts, Math.max(1, Math.floor(params.restoreTaskBytes / index.chunkSize))), params.readFronts);
    // After a failure the other tasks still write (inWindow waits for them): their descriptors must
    // not close (and their numbers go to another file) under them.
    await inWindow(repo, workers, chunks, index, runs, repeated, async (items) => {
      await write(items);
    });
  }
  o.progress?.done();
  return written;
}

/**
 * The chunks of a backup in a bucket, in pack order: each range of neighbouring records fetched
 * with one ranged request by this thread (its bytes moved to the worker that checks and writes
 * them), a few at once; chunks of zeros (a block device's) after, in device order.
 */
async function writeByPack(repo: Repository, workers: WorkerPool<'restore'>, chunks: ChunkIndex, index: Index, wanted: number[], write: (items: LoadItem[], fetched?: FetchedRange, transfer?: ArrayBuffer[]) => Promise<void>): Promise<void> {
  const zeros = wanted.filter((c) => isZeroDigest(index.digests, c * 32));
  const repeated = repeatedIn(wanted.filter((c) => !isZeroDigest(index.digests, c * 32)), index);
  const lengthOf = (c: number): number => Math.min(index.chunkSize, index.size - c * index.chunkSize);
  const limits = { maximumBytes: params.s3RangeBytes, maximumDecoded: 2 * params.s3RangeBytes, gap: params.s3RangeGap };
  // Each task holds its range and its decoded chunks: a few per worker keep the workers and the store busy.
  const window = workers.size * 2 + 2;
  const inFlight = new TaskWindow(window);
  const itemsOf = (list: number[]): LoadItem[] => withCopies(list.flatMap((c) => chunks.loadItems(repo.backend, index, c, 1)), repeated.copiesOf, index.chunkSize);
  // Ranges are fetched into memory the workers share, a slot for each task that may be in flight,
  // each freed by the worker that wrote its chunks: no buffer moves between threads (a range larger
  // than a slot, a single record past the limit, brings its own).
  const slots = SharedSlots.create(window + 1, params.s3RangeBytes);
  await workers.runOnAll({ kind: 'rangeSlots', slots: slots.handle });
  try {
    for (const range of packRanges(chunks, index.digests, repeated.firsts, index.chunkSize, lengthOf, limits)) {
      const items = itemsOf(range.chunks);
      const name = names.pack(chunks.packs[range.pack] as string);
      await inFlight.add(
        (async () => {
          const slot = range.bytes <= params.s3RangeBytes ? slots.claim() : null;
          const data = slot === null ? Buffer.allocUnsafe(range.bytes) : slots.view(slot, range.bytes);
          let handedOn = false;
          try {
            const n = await repo.backend.readRange(name, range.offset, data);
            handedOn = true;
            if (slot === null) await write(items, { offset: range.offset, data: data.subarray(0, n) }, [data.buffer as ArrayBuffer]);
            else await write(items, { offset: range.offset, data: { slot, length: n } });
          } finally {
            // The worker frees a slot it was handed; one never handed on is freed here.
            if (slot !== null && !handedOn) slots.release(slot);
          }
        })(),
      );
    }
    for (const run of runsOf(zeros, Math.max(1, Math.floor(params.restoreTaskBytes / index.chunkSize)))) await inFlight.add(write(chunks.loadItems(repo.backend, index, run.first, run.count)));
  } finally {
    await inFlight.settle();
  }
  await inFlight.drain();
}
