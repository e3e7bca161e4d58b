// Owns the work of one worker thread of the repository: hashing, compressing and storing chunks;
// loading and checking them (and writing them to a restore target); checking stored files.
import * as fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { BlkError, toBlkError } from '../errors.js';
import { checkChunkFile, isAllZero, loadChunk, sha256, storeChunk } from './chunk-file.js';
import { isZeroDigest } from './layout.js';

export type ChunkTask =
  /** Hashes and stores consecutive chunks of `data` (lengths in order). */
  | { kind: 'store'; repo: string; level: number | null; data: Uint8Array; lengths: number[] }
  /**
   * Loads chunks by digest and checks them. With `fd`: writes each at its offset (zero chunks only
   * when `writeZeros`), else returns their bytes.
   */
  | { kind: 'load'; repo: string; digests: Uint8Array; lengths: number[]; offsets: number[]; fd?: number; writeZeros?: boolean }
  /** Checks stored chunk files against their names. */
  | { kind: 'check'; files: string[] };

export type ChunkResult =
  | { kind: 'store'; digests: Uint8Array; storedBytes: number; newChunks: number }
  | { kind: 'load'; data: Uint8Array[]; writtenBytes: number }
  | { kind: 'check'; bad: Array<{ file: string; reason: string }> };

function run(task: ChunkTask): { result: ChunkResult; transfer: ArrayBuffer[] } {
  switch (task.kind) {
    case 'store': {
      const digests = new Uint8Array(task.lengths.length * 32);
      let at = 0;
      let storedBytes = 0;
      let newChunks = 0;
      task.lengths.forEach((length, i) => {
        const chunk = task.data.subarray(at, at + length);
        at += length;
        if (isAllZero(chunk)) return; // the zero digest: never stored
        const digest = sha256(chunk);
        digests.set(digest, i * 32);
        const n = storeChunk(task.repo, digest.toString('hex'), chunk, task.level);
        storedBytes += n;
        if (n > 0) newChunks++;
      });
      return { result: { kind: 'store', digests, storedBytes, newChunks }, transfer: [digests.buffer as ArrayBuffer] };
    }
    case 'load': {
      const data: Uint8Array[] = [];
      let writtenBytes = 0;
      let zeros: Uint8Array | null = null;
      task.lengths.forEach((length, i) => {
        const isZero = isZeroDigest(task.digests, i * 32);
        let chunk: Uint8Array;
        if (isZero) {
          if (task.fd !== undefined && !task.writeZeros) return;
          if (task.fd !== undefined) {
            if (zeros === null || zeros.length < length) zeros = new Uint8Array(length);
            chunk = zeros.subarray(0, length);
          } else {
            chunk = new Uint8Array(length);
          }
        } else {
          chunk = new Uint8Array(length);
          try {
            loadChunk(task.repo, Buffer.from(task.digests.subarray(i * 32, i * 32 + 32)).toString('hex'), chunk);
          } catch (e) {
            throw new BlkError('EIO', `the chunk at offset ${task.offsets[i]}: ${toBlkError(e).message}`);
          }
        }
        if (task.fd !== undefined) {
          const offset = task.offsets[i] as number;
          let done = 0;
          while (done < length) done += fs.writeSync(task.fd, chunk, done, length - done, offset + done);
          writtenBytes += length;
        } else {
          data.push(chunk);
        }
      });
      return { result: { kind: 'load', data, writtenBytes }, transfer: data.map((d) => d.buffer as ArrayBuffer) };
    }
    case 'check': {
      const bad: Array<{ file: string; reason: string }> = [];
      for (const file of task.files) {
        const reason = checkChunkFile(file);
        if (reason !== null) bad.push({ file, reason });
      }
      return { result: { kind: 'check', bad }, transfer: [] };
    }
  }
}

parentPort?.on('message', (message: { id: number; task: ChunkTask }) => {
  try {
    const { result, transfer } = run(message.task);
    parentPort?.postMessage({ id: message.id, result }, transfer);
  } catch (e) {
    const err = toBlkError(e);
    parentPort?.postMessage({ id: message.id, error: { code: err.code, message: err.message, detail: (err as BlkError).detail ?? null } });
  }
});
