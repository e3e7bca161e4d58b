// Owns one chunk's file: stored under the SHA-256 of its content, zstd-compressed when that makes it
// smaller, written under a temporary name and renamed; read back only after its digest checks out.
// Synchronous on purpose: it runs in worker threads (and for on-demand reads of an attached backup).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { threadId } from 'node:worker_threads';
import { BlkError } from '../errors.js';
import { zstdCompress, zstdContentSize, zstdDecompress } from '../os/zstd.js';
import { layout, TEMP_MARK } from './layout.js';

let tempCounter = 0;

/** No chunk is larger than the largest CBT block (2^26 bytes). */
const MAXIMUM_CHUNK = 2 ** 26;

export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

export function isAllZero(data: Uint8Array): boolean {
  const words = new BigUint64Array(data.buffer, data.byteOffset, Math.floor(data.byteLength / 8));
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = words.length * 8; i < data.byteLength; i++) if (data[i] !== 0) return false;
  return true;
}

/** Writes `data` to `file` whole or not at all: a temporary file beside it, then rename (durable at the caller's syncfs). */
export function writeFileAtomically(file: string, data: Uint8Array): void {
  const temp = `${file}${TEMP_MARK}${process.pid}.${threadId}.${tempCounter++}`;
  try {
    fs.writeFileSync(temp, data, { mode: 0o644 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(temp, data, { mode: 0o644 });
  }
  fs.renameSync(temp, file);
}

/** Whether the repository holds the chunk already (in either form). */
export function hasChunk(repo: string, hex: string): boolean {
  return fs.existsSync(layout.chunk(repo, hex, true)) || fs.existsSync(layout.chunk(repo, hex, false));
}

/**
 * Stores a chunk unless the repository has it: compressed at `level` (null: never) when smaller.
 * Returns the bytes written (0 when it was there).
 */
export function storeChunk(repo: string, hex: string, data: Uint8Array, level: number | null): number {
  if (hasChunk(repo, hex)) return 0;
  if (level !== null) {
    const packed = zstdCompress(data, level);
    if (packed.length < data.length) {
      writeFileAtomically(layout.chunk(repo, hex, true), packed);
      return packed.length;
    }
  }
  writeFileAtomically(layout.chunk(repo, hex, false), data);
  return data.length;
}

/**
 * Reads chunk `hex` of `into.length` bytes into `into`, checking its digest; EIO naming the chunk
 * when it is missing, damaged or of another length.
 */
export function loadChunk(repo: string, hex: string, into: Uint8Array): void {
  let stored: Buffer;
  let isCompressed = true;
  try {
    stored = fs.readFileSync(layout.chunk(repo, hex, true));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new BlkError('EIO', `chunk ${hex}: ${(e as Error).message}`);
    isCompressed = false;
    try {
      stored = fs.readFileSync(layout.chunk(repo, hex, false));
    } catch {
      throw new BlkError('EIO', `chunk ${hex} is missing from the repository`, { chunk: hex });
    }
  }
  try {
    if (isCompressed) zstdDecompress(stored, into);
    else if (stored.length !== into.length) throw new BlkError('EIO', `${stored.length} bytes, expected ${into.length}`);
    else Buffer.from(into.buffer, into.byteOffset, into.byteLength).set(stored);
  } catch (e) {
    throw new BlkError('EIO', `chunk ${hex} is damaged: ${(e as Error).message}`, { chunk: hex });
  }
  if (sha256(into).toString('hex') !== hex) throw new BlkError('EIO', `chunk ${hex} is damaged: its content does not match its digest`, { chunk: hex });
}

/** Checks a stored chunk file (either form) against its name; the reason when it fails. */
export function checkChunkFile(file: string): string | null {
  const base = path.basename(file);
  const isCompressed = base.endsWith('.zst');
  const hex = isCompressed ? base.slice(0, -4) : base;
  try {
    const stored = fs.readFileSync(file);
    let content: Uint8Array = stored;
    if (isCompressed) {
      const size = zstdContentSize(stored, MAXIMUM_CHUNK);
      const out = new Uint8Array(size);
      zstdDecompress(stored, out);
      content = out;
    }
    return sha256(content).toString('hex') === hex ? null : 'content does not match its digest';
  } catch (e) {
    return (e as Error).message;
  }
}
