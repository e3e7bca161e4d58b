// Owns reading chunks out of packs in a worker thread: records that follow one another read with one
// pread, past the page cache where the filesystem allows, each checked against its digest; the
// descriptors of the packs read are kept until the worker is told to close them.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkError, toBlkError } from '../../errors.js';
import { AlignedBufferPool } from '../../os/aligned-pool.js';
import { openDirectSync, readAt, readUpTo } from '../../os/fd-io.js';
import { DIRECT_ALIGNMENT } from '../../os/koffi.js';
import type { Backend, BackendSpec } from '../../repository/backend.js';
import { openBackend } from '../../repository/backends.js';
import type { ChunkLocation, LoadItem } from '../../repository/chunk-index.js';
import { cipherOf, type ObjectCipher, PLAIN } from '../../repository/cipher.js';
import { decodeRecord, RECORD_HEADER } from '../../repository/pack.js';

/** The ciphers of the repositories this thread read from, by secret (a daemon serves backups of several). */
const ciphers = new Map<string, ObjectCipher>();

/** The cipher of the repository whose secret is `secret` (null: a plain one). */
export function cipherFor(secret: Uint8Array | null): ObjectCipher {
  if (secret === null) return PLAIN;
  const key = Buffer.from(secret).toString('hex');
  let cipher = ciphers.get(key);
  if (!cipher) {
    cipher = cipherOf(secret);
    ciphers.set(key, cipher);
  }
  return cipher;
}

/** Drops the cipher of `secret` (a served backup detached: its key is not kept past the attach). */
export function forgetCipher(secret: Uint8Array | null | undefined): void {
  if (secret) ciphers.delete(Buffer.from(secret).toString('hex'));
}

/** This thread's aligned memory for reads past the page cache and runs of decoded chunks (written by O_DIRECT). */
export const alignedBuffers = new AlignedBufferPool(64 * 1024 * 1024);

const packFds = new Map<string, number>();

function packFd(file: string): number {
  let fd = packFds.get(file);
  if (fd === undefined) {
    fd = fs.openSync(file, 'r');
    packFds.set(file, fd);
  }
  return fd;
}

/** Records that follow one another in one pack (items first … end-1), read with one pread. */
export interface Span {
  first: number;
  end: number;
  /** Where the first record starts in its pack, and the bytes of all. */
  offset: number;
  bytes: number;
}

export function spansOf(items: LoadItem[]): Span[] {
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
      // The same pack object (a bucket's have no local file to tell them apart), the next record in it.
      if (w === null || w.name !== where.name || w.file !== where.file || w.offset !== where.offset + bytes || bytes > 8 * 1024 * 1024) break;
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
  const where = head.where as NonNullable<LoadItem['where']>;
  try {
    if (where.file === null) throw new BlkError('ENOTSUP', `pack ${where.name} is not a local file`);
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
export function readStored(items: LoadItem[]): Array<Buffer | null> {
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
export async function readStoredAsync(items: LoadItem[], held: Buffer[]): Promise<Array<Buffer | null>> {
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

export function decodeItem(item: LoadItem, stored: Uint8Array, into: Uint8Array, cipher: ObjectCipher): void {
  const where = item.where as ChunkLocation;
  const reason = stored.length !== where.storedLength ? 'its pack is cut short' : decodeRecord(stored, where.flags, item.digest, into, cipher);
  if (reason !== null) {
    throw new BlkError('EIO', `the chunk at offset ${item.offset}: chunk ${Buffer.from(item.digest).toString('hex')} is damaged: ${reason}`);
  }
}


/** Closes the packs this thread read from folder `dir` (every one without it); how many. */
export function closePacks(dir?: string): number {
  let closed = 0;
  for (const map of [packFds, directPackFds] as Array<Map<string, number | null>>) {
    for (const [file, fd] of map) {
      if (dir !== undefined && path.dirname(file) !== dir) continue;
      if (fd !== null) fs.closeSync(fd);
      map.delete(file);
      closed++;
    }
  }
  return closed;
}

/** Backends this thread opened by spec (a served backup's, a verified one's bucket): one client each. */
const backends = new Map<string, Backend>();

/** The backend of `spec`, opened once per thread (an object store's client is made on its first request). */
export function backendOf(spec: BackendSpec): Backend {
  const key = JSON.stringify(spec);
  let backend = backends.get(key);
  if (!backend) {
    backend = openBackend(spec);
    backends.set(key, backend);
  }
  return backend;
}

/** Every item's stored bytes, each span of records fetched with one ranged read of its object (a pack in an object store). */
export async function readStoredRemote(items: LoadItem[], spec: BackendSpec): Promise<Array<Buffer | null>> {
  const backend = backendOf(spec);
  const out: Array<Buffer | null> = items.map(() => null);
  await Promise.all(
    spansOf(items).map(async (span) => {
      const where = (items[span.first] as LoadItem).where as NonNullable<LoadItem['where']>;
      const data = Buffer.allocUnsafe(span.bytes);
      cutSpan(items, span, data, await backend.readRange(where.name, span.offset, data), out);
    }),
  );
  return out;
}

/** Every item's stored bytes cut out of a range of their pack fetched already (null for zero chunks); a record past its end comes short (and fails its check). */
export function cutFetched(items: LoadItem[], fetched: { offset: number; data: Uint8Array }): Array<Buffer | null> {
  const bytes = Buffer.from(fetched.data.buffer, fetched.data.byteOffset, fetched.data.byteLength);
  return items.map((item) => {
    const where = item.where;
    if (where === null) return null;
    const start = where.offset - fetched.offset + RECORD_HEADER;
    if (start < RECORD_HEADER) throw new BlkError('EINVAL', `the chunk at offset ${item.offset}: its record lies before the range fetched`);
    return bytes.subarray(start, start + where.storedLength);
  });
}

/** A load task's chunks (a restore's or a served backup's): read by descriptor, or by range from an object store, then checked. */
export async function loadTask(task: { items: LoadItem[]; secret: Uint8Array | null; repository?: BackendSpec }): Promise<Uint8Array[]> {
  return loadItems(task.items, cipherFor(task.secret), task.repository ? await readStoredRemote(task.items, task.repository) : undefined);
}

/** Loads and checks chunks: their bytes, each in memory of its own (moved to the main thread); `stored` where they were read already. */
export function loadItems(items: LoadItem[], cipher: ObjectCipher, stored: Array<Buffer | null> = readStored(items)): Uint8Array[] {
  return items.map((item, i) => {
    const bytes = stored[i];
    if (!bytes) return new Uint8Array(item.length);
    // Not zeroed first: decoding fills it, and bytes that do not match the digest fail the load.
    const chunk = new Uint8Array(Buffer.allocUnsafeSlow(item.length).buffer, 0, item.length);
    decodeItem(item, bytes, chunk, cipher);
    return chunk;
  });
}
