// Owns the work of one worker thread of the repository: hashing chunks, appending the new ones to a pack
// of its own (compressed), loading and checking chunks (and writing them to a restore target), and
// checking whole packs.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parentPort } from 'node:worker_threads';
import { BlkError, toBlkError } from '../errors.js';
import { openDirectSync, readAt, readUpTo, writeFully } from '../os/fd-io.js';
import { AlignedBufferPool } from '../os/aligned-pool.js';
import { DIRECT_ALIGNMENT } from '../os/koffi.js';
import { adviseWillNeed } from '../os/libc.js';
import { startWriteback } from '../os/writeback-range.js';
import { isAllZero } from './chunk-file.js';
import type { ChunkLocation, LoadItem } from './chunk-index.js';
import { decodeRecord, PackWriter, RECORD_HEADER, readIdx, sha256 } from './pack.js';

/** Bytes [at, at + length) of the memory shared with this thread by a `share` task. */
export interface SharedBytes {
  at: number;
  length: number;
}

export type ChunkTask =
  /**
   * Takes memory the main thread reads into, for `hash` tasks to name their bytes in: no buffer moves
   * between threads per task (each moved buffer counted as new memory outside the heap, and the main
   * thread's collector ran 190 times in a 4 GiB backup for that alone).
   */
  | { kind: 'share'; buffer: SharedArrayBuffer }
  /** Hashes consecutive chunks of `data`; keeps the bytes under `id` for a `store` to follow. */
  | { kind: 'hash'; id: number; data: Uint8Array | SharedBytes; lengths: number[] }
  /** Appends chunks `which` of hashed task `id` to this worker's pack, then forgets the task's bytes. */
  | { kind: 'store'; id: number; which: number[]; chunksDir: string; level: number | null }
  /** Closes this worker's pack (durable, indexed, visible) and the packs it read. */
  | { kind: 'finish' }
  /** Closes the packs this worker read from `chunksDir` (a served backup detached). */
  | { kind: 'closePacks'; chunksDir: string }
  /** Loads and checks chunks; returns their bytes. */
  | { kind: 'load'; items: LoadItem[] }
  /**
   * Loads and checks consecutive chunks and writes them at their offsets (zero chunks only when
   * `writeZeros`). `fd` may be opened O_DIRECT (`direct`): pieces not aligned to 4 KiB then go
   * through `bufferedFd`.
   */
  | { kind: 'write'; items: LoadItem[]; fd: number; direct: boolean; bufferedFd: number; writeZeros: boolean }
  /** Reads a pack whole and checks every record against its index and its digest. */
  | { kind: 'checkPack'; pack: string; idx: string };

export type ChunkResult =
  | { kind: 'share' }
  | { kind: 'hash'; digests: Uint8Array }
  | { kind: 'store'; locations: Array<ChunkLocation & { index: number }>; storedBytes: number }
  | { kind: 'finish'; packs: string[] }
  | { kind: 'closePacks'; closed: number }
  | { kind: 'load'; data: Uint8Array[] }
  | { kind: 'write'; writtenBytes: number }
  | { kind: 'checkPack'; checked: number; bad: Array<{ digest: string; reason: string }> };

const hashed = new Map<number, { data: Uint8Array; lengths: number[]; digests: Uint8Array }>();
/** Memory shared by the main thread (a `share` task). */
let shared: SharedArrayBuffer | null = null;
let writer: PackWriter | null = null;
const packFds = new Map<string, number>();
/** This thread's aligned memory for runs of decoded chunks (written by O_DIRECT). */
const alignedBuffers = new AlignedBufferPool(64 * 1024 * 1024);

function packFd(file: string): number {
  let fd = packFds.get(file);
  if (fd === undefined) {
    fd = fs.openSync(file, 'r');
    packFds.set(file, fd);
  }
  return fd;
}

/** Records that follow one another in one pack (items first … end-1), read with one pread. */
interface Span {
  first: number;
  end: number;
  /** Where the first record starts in its pack, and the bytes of all. */
  offset: number;
  bytes: number;
}

function spansOf(items: LoadItem[]): Span[] {
  const spans: Span[] = [];
  for (let first = 0; first < items.length; ) {
    const where = (items[first] as LoadItem).where;
    if (where === null) {
      first++;
      continue;
    }
    let end = first + 1;
    let bytes = RECORD_HEADER + where.storedLength;
    for (; end < items.length; end++) {
      const w = (items[end] as LoadItem).where;
      if (w === null || w.file !== where.file || w.offset !== where.offset + bytes || bytes > 8 * 1024 * 1024) break;
      bytes += RECORD_HEADER + w.storedLength;
    }
    spans.push({ first, end, offset: where.offset, bytes });
    first = end;
  }
  return spans;
}

/** The span's pack opened by `open` (packFd, or directPackFd); EIO naming the chunk when it cannot be. */
function spanFd<T>(items: LoadItem[], span: Span, open: (file: string) => T = packFd as (file: string) => T): T {
  const head = items[span.first] as LoadItem;
  const where = head.where as ChunkLocation & { file: string };
  try {
    return open(where.file);
  } catch (e) {
    throw new BlkError('EIO', `the chunk at offset ${head.offset}: its pack ${where.pack} cannot be opened (${toBlkError(e).code})`);
  }
}

/** Cuts a span's bytes (`n` of them read) into its records' stored bytes, at their items' places in `out`. */
function cutSpan(items: LoadItem[], span: Span, data: Buffer, n: number, out: Array<Buffer | null>): void {
  let at = 0;
  for (let i = span.first; i < span.end; i++) {
    const w = (items[i] as LoadItem).where as ChunkLocation;
    out[i] = data.subarray(at + RECORD_HEADER, Math.min(n, at + RECORD_HEADER + w.storedLength));
    at += RECORD_HEADER + w.storedLength;
  }
}

/** Each span of records with its pack's descriptor and a buffer for its bytes. */
function spanReads(items: LoadItem[]): Array<{ span: Span; fd: number; data: Buffer }> {
  return spansOf(items).map((span) => ({ span, fd: spanFd(items, span), data: Buffer.allocUnsafe(span.bytes) }));
}

/** Every item's stored bytes (null for zero chunks), each span of records read with one pread. */
function readStored(items: LoadItem[]): Array<Buffer | null> {
  const out: Array<Buffer | null> = items.map(() => null);
  for (const { span, fd, data } of spanReads(items)) cutSpan(items, span, data, fs.readSync(fd, data, 0, span.bytes, span.offset), out);
  return out;
}

/** Descriptors of packs opened with O_DIRECT by this thread (null: the filesystem refuses it). */
const directPackFds = new Map<string, number | null>();

function directPackFd(file: string): number | null {
  let fd = directPackFds.get(file);
  if (fd === undefined) {
    fd = openDirectSync(file, fs.constants.O_RDONLY);
    directPackFds.set(file, fd);
  }
  return fd;
}

/**
 * As readStored, with the reads in the thread pool (this thread decodes meanwhile) and past the page
 * cache where the filesystem allows: each record is read once, and a new page-cache page costs this
 * VM a fault in the host. The aligned buffers in `held` go back to the pool once the bytes are used.
 */
async function readStoredAsync(items: LoadItem[], held: Buffer[]): Promise<Array<Buffer | null>> {
  const out: Array<Buffer | null> = items.map(() => null);
  // Settled, all of them, before a failure is thrown: no buffer goes back to the pool while a read still fills it.
  const reads = await Promise.allSettled(spansOf(items).map(async (span) => {
    const direct = spanFd(items, span, directPackFd);
    if (direct === null) {
      const data = Buffer.allocUnsafe(span.bytes);
      cutSpan(items, span, data, await readAt(spanFd(items, span), data, span.offset), out);
      return;
    }
    const start = span.offset - (span.offset % DIRECT_ALIGNMENT);
    const end = Math.ceil((span.offset + span.bytes) / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
    const window = alignedBuffers.acquire(end - start);
    held.push(window);
    const n = await readUpTo(direct, window, start);
    const skip = span.offset - start;
    cutSpan(items, span, window.subarray(skip), Math.max(0, n - skip), out);
  }));
  for (const r of reads) if (r.status === 'rejected') throw r.reason;
  return out;
}

function decodeItem(item: LoadItem, stored: Uint8Array, into: Uint8Array): void {
  const where = item.where as ChunkLocation;
  const reason = stored.length !== where.storedLength ? 'its pack is cut short' : decodeRecord(stored, where.flags, item.digest, into);
  if (reason !== null) {
    throw new BlkError('EIO', `the chunk at offset ${item.offset}: chunk ${Buffer.from(item.digest).toString('hex')} is damaged: ${reason}`);
  }
}

/** A pack check reads this much at a time (an aligned size: the reads may be O_DIRECT). */
const CHECK_READ_BYTES = 8 * 1024 * 1024;
/** Reads a pack check keeps going ahead of the record it decodes. */
const CHECK_READS_AHEAD = 2;

/**
 * Reads a pack front to back and checks every record against its index and its digest. The pack is
 * read once, past the page cache where the filesystem allows (new page-cache pages cost this VM a
 * fault in the host each: half the check's time went to the kernel), with reads of its next windows
 * in the thread pool while this thread decodes and hashes.
 */
async function checkPack(task: Extract<ChunkTask, { kind: 'checkPack' }>): Promise<{ checked: number; bad: Array<{ digest: string; reason: string }> }> {
  const bad: Array<{ digest: string; reason: string }> = [];
  let entries: ReturnType<typeof readIdx>;
  try {
    entries = readIdx(task.idx);
  } catch (e) {
    return { checked: 0, bad: [{ digest: '', reason: toBlkError(e).message }] };
  }
  const byOffset = [...entries].sort((a, b) => a.offset - b.offset);
  const direct = openDirectSync(task.pack, fs.constants.O_RDONLY);
  const fd = direct ?? fs.openSync(task.pack, 'r');
  if (direct === null) adviseWillNeed(fd, 0, 0); // the whole pack read ahead by the kernel instead
  const lastWindow = Math.floor((fs.fstatSync(fd).size - 1) / CHECK_READ_BYTES);
  // Window k holds the pack's bytes [k × CHECK_READ_BYTES, …), fewer at its end.
  const windows = new Map<number, { buffer: Buffer; read: Promise<Buffer> }>();
  const windowAt = (k: number): Promise<Buffer> => {
    let w = windows.get(k);
    if (!w) {
      const buffer = alignedBuffers.acquire(CHECK_READ_BYTES);
      w = { buffer, read: readUpTo(fd, buffer, k * CHECK_READ_BYTES).then((n) => buffer.subarray(0, n)) };
      windows.set(k, w);
    }
    return w.read;
  };
  let decoded = new Uint8Array(0);
  let joined = Buffer.alloc(0);
  try {
    for (const e of byOffset) {
      const end = e.offset + RECORD_HEADER + e.storedLength;
      const first = Math.floor(e.offset / CHECK_READ_BYTES);
      const last = Math.floor((end - 1) / CHECK_READ_BYTES);
      for (const [k, w] of windows) {
        if (k >= first) continue;
        await w.read.catch(() => undefined); // never hand back a buffer the disk still fills
        alignedBuffers.release(w.buffer);
        windows.delete(k);
      }
      for (let k = first; k <= Math.min(last + CHECK_READS_AHEAD, lastWindow); k++) void windowAt(k).catch(() => undefined);
      // The record's bytes: in one window's buffer, or joined from the windows it spans.
      let record: Buffer;
      if (first === last) {
        const w = await windowAt(first);
        record = w.subarray(e.offset - first * CHECK_READ_BYTES, end - first * CHECK_READ_BYTES);
      } else {
        if (joined.length < end - e.offset) joined = Buffer.allocUnsafe(end - e.offset);
        let filled = 0;
        for (let k = first; k <= last; k++) {
          const w = await windowAt(k);
          const from = Math.max(0, e.offset + filled - k * CHECK_READ_BYTES);
          filled += w.copy(joined, filled, from, Math.min(w.length, end - k * CHECK_READ_BYTES));
        }
        record = joined.subarray(0, filled);
      }
      let reason: string | null;
      if (record.length < end - e.offset) reason = 'its pack is cut short';
      else if (!record.subarray(0, 32).equals(e.digest) || record.readUInt32LE(32) !== e.storedLength) reason = 'its record header does not match the pack index';
      else {
        if (decoded.length < e.size) decoded = new Uint8Array(e.size);
        reason = decodeRecord(record.subarray(RECORD_HEADER), e.flags, e.digest, decoded.subarray(0, e.size));
      }
      if (reason !== null) bad.push({ digest: e.digest.toString('hex'), reason });
    }
  } finally {
    for (const w of windows.values()) {
      await w.read.catch(() => undefined);
      alignedBuffers.release(w.buffer);
    }
    fs.closeSync(fd);
  }
  return { checked: entries.length, bad };
}


/**
 * Decodes a run into one buffer and writes each stretch of it with one pwrite, in the thread pool
 * so that this thread decodes the next run meanwhile. With O_DIRECT the bytes go from this buffer
 * to the disk: no page-cache copy and no final flood of writeback; two threads writing one file
 * through the page cache spun on its inode lock (measured: docs/performance.md).
 */
async function writeItems(task: Extract<ChunkTask, { kind: 'write' }>): Promise<number> {
  const items = task.items;
  const first = items[0];
  if (!first) return 0;
  const last = items.at(-1) as LoadItem;
  const held: Buffer[] = [];
  const span = alignedBuffers.acquire(last.offset + last.length - first.offset);
  const writes: Array<Promise<void>> = [];
  let written = 0;
  // Where the span's bytes go: [from, to) of it at device offset `at`. A piece grows while the next
  // item continues it both in the span and on the device (a stretch, or a stretch's copy).
  const pieces: Array<{ from: number; to: number; at: number }> = [];
  try {
    const stored = await readStoredAsync(items, held);
    let growing: Array<{ from: number; to: number; at: number }> = [];
    items.forEach((item, i) => {
      const from = item.offset - first.offset;
      const into = span.subarray(from, from + item.length);
      if (item.where === null) {
        if (!task.writeZeros) {
          growing = [];
          return;
        }
        into.fill(0);
      } else {
        decodeItem(item, stored[i] as Buffer, into);
      }
      const grown: typeof growing = [];
      for (const at of [item.offset, ...(item.copies ?? [])]) {
        const piece = growing.find((p) => p.to === from && p.at + (p.to - p.from) === at);
        if (piece) piece.to = from + item.length;
        else pieces.push({ from, to: from + item.length, at });
        grown.push(piece ?? (pieces.at(-1) as (typeof pieces)[number]));
      }
      growing = grown;
    });
    for (const { from, to, at } of pieces) {
      const data = span.subarray(from, to);
      const aligned = task.direct ? data.length - (data.length % DIRECT_ALIGNMENT) : 0;
      if (aligned > 0) writes.push(writeFully(task.fd, data.subarray(0, aligned), at));
      if (aligned < data.length) writes.push(writeFully(task.bufferedFd, data.subarray(aligned), at + aligned));
      written += data.length;
    }
  } finally {
    for (const b of held) alignedBuffers.release(b);
    // Never back into use while a write of it may still run.
    void Promise.allSettled(writes).then(() => alignedBuffers.release(span));
  }
  // All settled before the task answers, failed or not: the main thread closes the target after the last answer.
  for (const w of await Promise.allSettled(writes)) if (w.status === 'rejected') throw w.reason;
  // Through the page cache, the restore ends in fsync: its disk writes start now, beside the work still to come.
  if (!task.direct) for (const { from, to, at } of pieces) startWriteback(task.fd, at, to - from);
  return written;
}

function run(task: Exclude<ChunkTask, { kind: 'write' | 'checkPack' }>): { result: ChunkResult; transfer: ArrayBuffer[] } {
  switch (task.kind) {
    case 'share':
      shared = task.buffer;
      return { result: { kind: 'share' }, transfer: [] };
    case 'hash': {
      if (!(task.data instanceof Uint8Array) && !shared) throw new BlkError('EINVAL', 'a hash task names shared memory, but none was shared');
      const data = task.data instanceof Uint8Array ? task.data : new Uint8Array(shared as SharedArrayBuffer, task.data.at, task.data.length);
      const digests = new Uint8Array(task.lengths.length * 32);
      let at = 0;
      task.lengths.forEach((length, i) => {
        const chunk = data.subarray(at, at + length);
        at += length;
        if (!isAllZero(chunk)) digests.set(sha256(chunk), i * 32); // zeros: the zero digest, never stored
      });
      hashed.set(task.id, { data, lengths: task.lengths, digests: digests.slice() });
      return { result: { kind: 'hash', digests }, transfer: [digests.buffer as ArrayBuffer] };
    }
    case 'store': {
      const h = hashed.get(task.id);
      hashed.delete(task.id);
      if (!h) throw new BlkError('EINVAL', `no hashed chunks under ${task.id}`);
      writer ??= new PackWriter(task.chunksDir, task.level);
      const starts: number[] = [];
      let at = 0;
      for (const l of h.lengths) {
        starts.push(at);
        at += l;
      }
      const locations: Array<ChunkLocation & { index: number }> = [];
      let storedBytes = 0;
      for (const i of task.which) {
        const chunk = h.data.subarray(starts[i] as number, (starts[i] as number) + (h.lengths[i] as number));
        const { pack, entry } = writer.append(Buffer.from(h.digests.buffer, h.digests.byteOffset + i * 32, 32), chunk);
        storedBytes += RECORD_HEADER + entry.storedLength;
        locations.push({ index: i, pack, offset: entry.offset, storedLength: entry.storedLength, flags: entry.flags, size: entry.size });
      }
      return { result: { kind: 'store', locations, storedBytes }, transfer: [] };
    }
    case 'finish': {
      writer?.close();
      const packs = writer ? [...writer.closed] : [];
      writer = null;
      for (const fd of [...packFds.values(), ...directPackFds.values()]) if (fd !== null) fs.closeSync(fd);
      packFds.clear();
      directPackFds.clear();
      return { result: { kind: 'finish', packs }, transfer: [] };
    }
    case 'closePacks': {
      let closed = 0;
      for (const map of [packFds, directPackFds] as Array<Map<string, number | null>>) {
        for (const [file, fd] of map) {
          if (path.dirname(file) !== task.chunksDir) continue;
          if (fd !== null) fs.closeSync(fd);
          map.delete(file);
          closed++;
        }
      }
      return { result: { kind: 'closePacks', closed }, transfer: [] };
    }
    case 'load': {
      const stored = readStored(task.items);
      const data = task.items.map((item, i) => {
        const bytes = stored[i];
        if (!bytes) return new Uint8Array(item.length);
        // Not zeroed first: decoding fills it, and bytes that do not match the digest fail the load.
        const chunk = new Uint8Array(Buffer.allocUnsafeSlow(item.length).buffer, 0, item.length);
        decodeItem(item, bytes, chunk);
        return chunk;
      });
      return { result: { kind: 'load', data }, transfer: data.map((d) => d.buffer as ArrayBuffer) };
    }
  }
}

function fail(id: number, e: unknown): void {
  const err = toBlkError(e);
  parentPort?.postMessage({ id, error: { code: err.code, message: err.message } });
}

let checking: Promise<unknown> = Promise.resolve();

parentPort?.on('message', (message: { id: number; task: ChunkTask }) => {
  const task = message.task;
  if (task.kind === 'write') {
    // Asynchronous: the next task is decoded while this one's writes run.
    writeItems(task).then((writtenBytes) => parentPort?.postMessage({ id: message.id, result: { kind: 'write', writtenBytes } }), (e: unknown) => fail(message.id, e));
    return;
  }
  if (task.kind === 'checkPack') {
    // One pack at a time: a verify hands each worker all its packs at once.
    checking = checking.then(() => checkPack(task)).then((r) => parentPort?.postMessage({ id: message.id, result: { kind: 'checkPack', ...r } }), (e: unknown) => fail(message.id, e));
    return;
  }
  try {
    const { result, transfer } = run(task);
    parentPort?.postMessage({ id: message.id, result }, transfer);
  } catch (e) {
    fail(message.id, e);
  }
});

// Every import above is loaded: the pool may now let the process end, or terminate this thread.
parentPort?.postMessage({ loaded: true });
