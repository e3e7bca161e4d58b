// Owns the work of one worker thread of the repository: hashing chunks, appending the new ones to a pack
// of its own (compressed), loading and checking chunks (and writing them to a restore target), and
// checking whole packs.
import * as fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { BlkError, toBlkError } from '../errors.js';
import { startWriteback } from '../os/writeback-range.js';
import { isAllZero } from './chunk-file.js';
import type { ChunkLocation, LoadItem } from './chunk-index.js';
import { decodeRecord, PackWriter, RECORD_HEADER, readIdx, sha256, writeAll } from './pack.js';

export type ChunkTask =
  /** Hashes consecutive chunks of `data`; keeps the bytes under `id` for a `store` to follow. */
  | { kind: 'hash'; id: number; data: Uint8Array; lengths: number[] }
  /** Appends chunks `which` of hashed task `id` to this worker's pack, then forgets the task's bytes. */
  | { kind: 'store'; id: number; which: number[]; chunksDir: string; level: number | null }
  /** Closes this worker's pack: durable, indexed, visible. */
  | { kind: 'finish' }
  /** Loads and checks chunks. With `fd`: writes each at its offset (zero chunks only when `writeZeros`), else returns their bytes. */
  | { kind: 'load'; items: LoadItem[]; fd?: number; writeZeros?: boolean }
  /** Reads a pack whole and checks every record against its index and its digest. */
  | { kind: 'checkPack'; pack: string; idx: string };

export type ChunkResult =
  | { kind: 'hash'; digests: Uint8Array }
  | { kind: 'store'; locations: Array<ChunkLocation & { index: number }>; storedBytes: number }
  | { kind: 'finish'; packs: string[] }
  | { kind: 'load'; data: Uint8Array[]; writtenBytes: number }
  | { kind: 'checkPack'; checked: number; bad: Array<{ digest: string; reason: string }> };

const hashed = new Map<number, { data: Uint8Array; lengths: number[]; digests: Uint8Array }>();
let writer: PackWriter | null = null;
const packFds = new Map<string, number>();

function packFd(file: string): number {
  let fd = packFds.get(file);
  if (fd === undefined) {
    fd = fs.openSync(file, 'r');
    packFds.set(file, fd);
  }
  return fd;
}

/** Records that follow one another in one pack, read with one pread. */
function readSpan(items: LoadItem[], first: number): { stored: Buffer[]; next: number } {
  const head = items[first] as LoadItem;
  const where = head.where as ChunkLocation & { file: string };
  let end = first + 1;
  let bytes = RECORD_HEADER + where.storedLength;
  for (; end < items.length; end++) {
    const w = (items[end] as LoadItem).where;
    if (w === null || w.file !== where.file || w.offset !== where.offset + bytes || bytes > 8 * 1024 * 1024) break;
    bytes += RECORD_HEADER + w.storedLength;
  }
  let fd: number;
  try {
    fd = packFd(where.file);
  } catch (e) {
    throw new BlkError('EIO', `the chunk at offset ${head.offset}: its pack ${where.pack} cannot be opened (${toBlkError(e).code})`);
  }
  const span = Buffer.allocUnsafe(bytes);
  const n = fs.readSync(fd, span, 0, bytes, where.offset);
  const stored: Buffer[] = [];
  let at = 0;
  for (let i = first; i < end; i++) {
    const w = (items[i] as LoadItem).where as ChunkLocation;
    stored.push(span.subarray(at + RECORD_HEADER, Math.min(n, at + RECORD_HEADER + w.storedLength)));
    at += RECORD_HEADER + w.storedLength;
  }
  return { stored, next: end };
}

function decodeItem(item: LoadItem, stored: Uint8Array, into: Uint8Array): void {
  const where = item.where as ChunkLocation;
  const reason = stored.length !== where.storedLength ? 'its pack is cut short' : decodeRecord(stored, where.flags, item.digest, into);
  if (reason !== null) {
    throw new BlkError('EIO', `the chunk at offset ${item.offset}: chunk ${Buffer.from(item.digest).toString('hex')} is damaged: ${reason}`);
  }
}

function run(task: ChunkTask): { result: ChunkResult; transfer: ArrayBuffer[] } {
  switch (task.kind) {
    case 'hash': {
      const digests = new Uint8Array(task.lengths.length * 32);
      let at = 0;
      task.lengths.forEach((length, i) => {
        const chunk = task.data.subarray(at, at + length);
        at += length;
        if (!isAllZero(chunk)) digests.set(sha256(chunk), i * 32); // zeros: the zero digest, never stored
      });
      hashed.set(task.id, { data: task.data, lengths: task.lengths, digests: digests.slice() });
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
      for (const fd of packFds.values()) fs.closeSync(fd);
      packFds.clear();
      return { result: { kind: 'finish', packs }, transfer: [] };
    }
    case 'load': {
      const data: Uint8Array[] = [];
      let writtenBytes = 0;
      let zeros: Uint8Array | null = null;
      let pending: { stored: Buffer[]; base: number } = { stored: [], base: 0 };
      task.items.forEach((item, i) => {
        let chunk: Uint8Array;
        if (item.where === null) {
          if (task.fd !== undefined && !task.writeZeros) return;
          if (task.fd !== undefined) {
            if (zeros === null || zeros.length < item.length) zeros = new Uint8Array(item.length);
            chunk = zeros.subarray(0, item.length);
          } else {
            chunk = new Uint8Array(item.length);
          }
        } else {
          if (i - pending.base >= pending.stored.length) pending = { stored: readSpan(task.items, i).stored, base: i };
          chunk = new Uint8Array(item.length);
          decodeItem(item, pending.stored[i - pending.base] as Buffer, chunk);
        }
        if (task.fd !== undefined) {
          writeAll(task.fd, chunk, item.offset);
          writtenBytes += item.length;
        } else {
          data.push(chunk);
        }
      });
      // The restore ends in fsync: the disk writes start now, beside the work still to come.
      const first = task.items[0];
      const last = task.items.at(-1);
      if (task.fd !== undefined && first && last && writtenBytes > 0) startWriteback(task.fd, first.offset, last.offset + last.length - first.offset);
      return { result: { kind: 'load', data, writtenBytes }, transfer: data.map((d) => d.buffer as ArrayBuffer) };
    }
    case 'checkPack': {
      const bad: Array<{ digest: string; reason: string }> = [];
      let entries: ReturnType<typeof readIdx>;
      try {
        entries = readIdx(task.idx);
      } catch (e) {
        return { result: { kind: 'checkPack', checked: 0, bad: [{ digest: '', reason: toBlkError(e).message }] }, transfer: [] };
      }
      const byOffset = [...entries].sort((a, b) => a.offset - b.offset);
      const fd = fs.openSync(task.pack, 'r');
      try {
        const header = Buffer.alloc(RECORD_HEADER);
        for (const e of byOffset) {
          const hex = e.digest.toString('hex');
          const stored = Buffer.allocUnsafe(e.storedLength);
          const n = fs.readSync(fd, header, 0, RECORD_HEADER, e.offset) === RECORD_HEADER ? fs.readSync(fd, stored, 0, stored.length, e.offset + RECORD_HEADER) : -1;
          let reason: string | null;
          if (n !== stored.length) reason = 'its pack is cut short';
          else if (!header.subarray(0, 32).equals(e.digest) || header.readUInt32LE(32) !== e.storedLength) reason = 'its record header does not match the pack index';
          else reason = decodeRecord(stored, e.flags, e.digest, new Uint8Array(e.size));
          if (reason !== null) bad.push({ digest: hex, reason });
        }
      } finally {
        fs.closeSync(fd);
      }
      return { result: { kind: 'checkPack', checked: entries.length, bad }, transfer: [] };
    }
  }
}

parentPort?.on('message', (message: { id: number; task: ChunkTask }) => {
  try {
    const { result, transfer } = run(message.task);
    parentPort?.postMessage({ id: message.id, result }, transfer);
  } catch (e) {
    const err = toBlkError(e);
    parentPort?.postMessage({ id: message.id, error: { code: err.code, message: err.message } });
  }
});
