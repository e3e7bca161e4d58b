// Owns the work of one of backup_verify's worker threads: a pack read front to back, every record
// checked against the pack's index and its digest. A local pack is read from its file; a pack in a
// bucket by ranged requests straight into this thread's buffers (no copy of it on disk).
import * as fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { toBlkError } from '../../errors.js';
import { openDirectSync, readUpTo } from '../../os/fd-io.js';
import { adviseWillNeed } from '../../os/libc.js';
import { names } from '../../repository/layout.js';
import { decodeRecord, entriesOf, openIdx, RECORD_HEADER } from '../../repository/pack.js';
import { alignedBuffers, backendOf, cipherFor } from './pack-reads.js';
import type { VerifyResult, VerifyTask } from './tasks.js';

/** A pack check reads this much at a time (an aligned size: the reads may be O_DIRECT). */
const CHECK_READ_BYTES = 8 * 1024 * 1024;
/** Reads a pack check keeps going ahead of the record it decodes. */
const CHECK_READS_AHEAD = 2;

/** A pack to check: its index's bytes, its size, and a read of `into.length` bytes from an offset. */
interface PackSource {
  idx: Buffer;
  idxName: string;
  size: number;
  read(into: Buffer, offset: number): Promise<number>;
  close(): void;
}

async function sourceOf(task: Extract<VerifyTask, { kind: 'checkPack' }>): Promise<PackSource> {
  if ('repository' in task) {
    const backend = backendOf(task.repository);
    // What is checked is what the store holds, never a copy a cache kept.
    backend.bypassCache();
    const pack = names.pack(task.id);
    return { idx: await backend.read(names.packIndex(task.id)), idxName: names.packIndex(task.id), size: task.size, read: (into, offset) => backend.readRange(pack, offset, into), close: () => undefined };
  }
  const idx = fs.readFileSync(task.idx);
  const direct = openDirectSync(task.pack, fs.constants.O_RDONLY);
  const fd = direct ?? fs.openSync(task.pack, 'r');
  if (direct === null) adviseWillNeed(fd, 0, 0); // the whole pack read ahead by the kernel instead
  return { idx, idxName: task.idx, size: fs.fstatSync(fd).size, read: (into, offset) => readUpTo(fd, into, offset), close: () => fs.closeSync(fd) };
}

/**
 * Reads a pack front to back and checks every record against its index and its digest. The pack is
 * read once, past the page cache where the filesystem allows (new page-cache pages cost this VM a
 * fault in the host each: half the check's time went to the kernel), with reads of its next windows
 * in the thread pool while this thread decodes and hashes.
 */
async function checkPack(task: Extract<VerifyTask, { kind: 'checkPack' }>): Promise<{ checked: number; bad: Array<{ digest: string; reason: string }> }> {
  const cipher = verifyCipher;
  const bad: Array<{ digest: string; reason: string }> = [];
  let entries: ReturnType<typeof entriesOf>;
  let source: PackSource;
  try {
    source = await sourceOf(task);
  } catch (e) {
    return { checked: 0, bad: [{ digest: '', reason: toBlkError(e).message }] };
  }
  try {
    entries = entriesOf(openIdx(source.idx, task.id, source.idxName, cipher));
  } catch (e) {
    source.close();
    return { checked: 0, bad: [{ digest: '', reason: toBlkError(e).message }] };
  }
  const byOffset = [...entries].sort((a, b) => a.offset - b.offset);
  const lastWindow = Math.floor((source.size - 1) / CHECK_READ_BYTES);
  // Window k holds the pack's bytes [k × CHECK_READ_BYTES, …), fewer at its end.
  const windows = new Map<number, { buffer: Buffer; read: Promise<Buffer> }>();
  const windowAt = (k: number): Promise<Buffer> => {
    let w = windows.get(k);
    if (!w) {
      const buffer = alignedBuffers.acquire(CHECK_READ_BYTES);
      w = { buffer, read: source.read(buffer, k * CHECK_READ_BYTES).then((n) => buffer.subarray(0, n)) };
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
        reason = decodeRecord(record.subarray(RECORD_HEADER), e.flags, e.digest, decoded.subarray(0, e.size), cipher);
      }
      if (reason !== null) bad.push({ digest: e.digest.toString('hex'), reason });
    }
  } finally {
    for (const w of windows.values()) {
      await w.read.catch(() => undefined);
      alignedBuffers.release(w.buffer);
    }
    source.close();
  }
  return { checked: entries.length, bad };
}


function fail(id: number, e: unknown): void {
  const err = toBlkError(e);
  parentPort?.postMessage({ id, error: { code: err.code, message: err.message } });
}

let checking: Promise<unknown> = Promise.resolve();
/** How the repository being verified names and seals its objects (its `cipher` task). */
let verifyCipher = cipherFor(null);

parentPort?.on('message', (message: { id: number; task: VerifyTask }) => {
  const task = message.task;
  if (task.kind === 'cipher') {
    verifyCipher = cipherFor(task.secret);
    return void parentPort?.postMessage({ id: message.id, result: { kind: 'cipher' } satisfies VerifyResult });
  }
  // One pack at a time: a verify hands each worker all its packs at once.
  checking = checking.then(() => checkPack(task)).then(
    (r) => parentPort?.postMessage({ id: message.id, result: { kind: 'checkPack', ...r } satisfies VerifyResult }),
    (e: unknown) => fail(message.id, e),
  );
});

// Every import above is loaded: the pool may now let the process end, or terminate this thread.
parentPort?.postMessage({ loaded: true });
