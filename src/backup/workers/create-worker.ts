// Owns the work of one of backup_create's worker threads: hashing the chunks of a run, appending the
// new ones to a pack of its own (compressed), and putting its packs in place at the end; or, for a
// store that takes objects in parts (a bucket), handing each part to the main thread as it fills,
// which sends it (this thread never loads the S3 client, and never waits for the network).
import { parentPort } from 'node:worker_threads';
import { BlkError, toBlkError } from '../../errors.js';
import type { BackendSpec } from '../../repository/backend.js';
import { openBackend } from '../../repository/backends.js';
import type { ChunkLocation } from '../../repository/chunk-index.js';
import { cipherOf, type ObjectCipher, PLAIN } from '../../repository/cipher.js';
import { isAllZero } from '../../repository/digest.js';
import { type PackPiece, PackWriter, RECORD_HEADER } from '../../repository/pack.js';
import { partBufferBytes } from '../../repository/part-stream.js';
import { backup as params } from '../../params.js';
import { s3Requests } from '../../repository/s3-backend.js';
import { SharedSlots } from '../../util/shared-slots.js';
import type { CreateResult, CreateTask, WirePiece } from './tasks.js';

const hashed = new Map<number, { data: Uint8Array; lengths: number[]; digests: Uint8Array }>();
/** Memory shared by the main thread (a `share` task). */
let shared: SharedArrayBuffer | null = null;
let writer: PackWriter | null = null;
/** How the repository names and seals its chunks (a `cipher` task sets it). */
let cipher: ObjectCipher = PLAIN;

/** Pieces of packs made since the last answer, for the main thread to send (a streaming writer's). */
const pieces: PackPiece[] = [];
/** Memory for parts, shared with the main thread (a `partSlots` task): null until then. */
let partSlots: SharedSlots | null = null;

/** A part's buffer: a free slot of the shared memory, or (all taken) memory of its own, moved to the main thread with the part. */
function partBuffer(): Buffer {
  const slot = partSlots?.claim() ?? null;
  return slot !== null && partSlots ? partSlots.view(slot) : Buffer.allocUnsafeSlow(partBufferBytes(params.s3PartBytes));
}

function writerFor(repository: BackendSpec, level: number | null): PackWriter {
  if (!writer) {
    const backend = openBackend(repository);
    writer = new PackWriter(backend, cipher, level, backend.startUpload ? { partBytes: params.s3PartBytes, emit: (piece) => pieces.push(piece), newBuffer: partBuffer } : null);
  }
  return writer;
}

/** The pieces made so far as they cross to the main thread: parts in slots by reference, other bytes moved. */
function takePieces(): { pieces: WirePiece[]; transfer: ArrayBuffer[] } {
  const wire: WirePiece[] = pieces.splice(0).map((p) => (p.kind === 'part' && partSlots ? { ...p, data: partSlots.ref(p.data) } : p));
  return { pieces: wire, transfer: wire.flatMap((p) => (p.data instanceof Uint8Array ? [p.data.buffer as ArrayBuffer] : [])) };
}

async function run(task: CreateTask): Promise<{ result: CreateResult; transfer: ArrayBuffer[] }> {
  switch (task.kind) {
    case 'cipher':
      cipher = cipherOf(task.secret);
      return { result: { kind: 'cipher' }, transfer: [] };
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
        if (!isAllZero(chunk)) digests.set(cipher.chunkId(chunk), i * 32); // zeros: the zero digest, never stored
      });
      hashed.set(task.id, { data, lengths: task.lengths, digests: digests.slice() });
      return { result: { kind: 'hash', digests }, transfer: [digests.buffer as ArrayBuffer] };
    }
    case 'store': {
      const h = hashed.get(task.id);
      hashed.delete(task.id);
      if (!h) throw new BlkError('EINVAL', `no hashed chunks under ${task.id}`);
      const pack = writerFor(task.repository, task.level);
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
        const { pack: id, entry } = pack.append(Buffer.from(h.digests.buffer, h.digests.byteOffset + i * 32, 32), chunk);
        storedBytes += RECORD_HEADER + entry.storedLength;
        locations.push({ index: i, pack: id, offset: entry.offset, storedLength: entry.storedLength, flags: entry.flags, size: entry.size });
      }
      // A pack that filled up goes in place now, not at the end with the rest.
      if (pack.hasFullPacks) await pack.close();
      const made = takePieces();
      return { result: { kind: 'store', locations, storedBytes, pieces: made.pieces }, transfer: made.transfer };
    }
    case 'finish': {
      await writer?.close();
      const packs = writer ? [...writer.closed] : [];
      writer = null;
      const made = takePieces();
      return { result: { kind: 'finish', packs, requests: s3Requests(), pieces: made.pieces }, transfer: made.transfer };
    }
    case 'partSlots':
      partSlots = new SharedSlots(task.slots);
      return { result: { kind: 'partSlots' }, transfer: [] };
  }
}

function fail(id: number, e: unknown): void {
  const err = toBlkError(e);
  parentPort?.postMessage({ id, error: { code: err.code, message: err.message } });
}

// One task at a time, in order: a store must follow its hash, and a pack's appends one another.
let queue: Promise<unknown> = Promise.resolve();

parentPort?.on('message', (message: { id: number; task: CreateTask }) => {
  queue = queue.then(() => run(message.task)).then(
    ({ result, transfer }) => parentPort?.postMessage({ id: message.id, result }, transfer),
    (e: unknown) => fail(message.id, e),
  );
});

// Every import above is loaded: the pool may now let the process end, or terminate this thread.
parentPort?.postMessage({ loaded: true });
