// Owns pack files, where chunks live (chunks/ID.pack with its index chunks/ID.idx): records appended
// one after another, each self-describing (digest, stored length, flags) so a pack can be read without
// its index; the index, written when the pack is closed, lists every record sorted by digest and is
// checked by a SHA-256. A pack is built in a local file (its appends run in a worker thread) and put
// in place by the backend, its index after it; or, for a store that takes objects in parts, built in
// memory and handed on part by part for another thread to send (PackPiece).
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkError } from '../errors.js';
import { AppendFile } from '../os/append-file.js';
import { writeFullySync } from '../os/fd-io.js';
import { zstdBound, zstdCompressInto, zstdDecompress } from '../os/zstd.js';
import { tracking } from '../params.js';
import type { Backend } from './backend.js';
import { aadOf, type ObjectCipher, SEAL_OVERHEAD } from './cipher.js';
import { sha256 } from './digest.js';
import { names } from './layout.js';
import { type FilledPart, PartStream } from './part-stream.js';

/** digest (32) · stored length (u32) · flags (u32: 1 = zstd) · uncompressed length (u32) · reserved (u32). */
export const RECORD_HEADER = 48;
export const FLAG_ZSTD = 1;
/** The stored bytes are sealed (an encrypted repository): nonce · ciphertext · tag, of the zstd frame or the chunk. */
export const FLAG_SEALED = 2;
const KNOWN_FLAGS = FLAG_ZSTD | FLAG_SEALED;
const IDX_MAGIC = Buffer.from('BLKSNAPK', 'latin1');
/** digest (32) · record offset (u64) · stored length (u32) · flags (u16) · reserved (u16) · uncompressed length (u32) · reserved (u32). */
export const IDX_ENTRY = 56;
/** The largest chunk: the largest CBT block. */
const MAXIMUM_CHUNK = 2 ** tracking.blockMaximumShift;
/** A pack is closed once it holds this much (in a directory; an object store's backend names its own size). */
const PACK_BYTES = 512 * 1024 * 1024;

export interface PackEntry {
  digest: Buffer;
  /** Offset of the record (its header) in the pack. */
  offset: number;
  storedLength: number;
  flags: number;
  size: number;
}

export function encodeIdx(entries: PackEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => Buffer.compare(a.digest, b.digest));
  const out = Buffer.alloc(16 + sorted.length * IDX_ENTRY + 32);
  IDX_MAGIC.copy(out, 0);
  out.writeUInt32LE(1, 8);
  out.writeUInt32LE(sorted.length, 12);
  sorted.forEach((e, i) => {
    const at = 16 + i * IDX_ENTRY;
    e.digest.copy(out, at);
    out.writeBigUInt64LE(BigInt(e.offset), at + 32);
    out.writeUInt32LE(e.storedLength, at + 40);
    out.writeUInt16LE(e.flags, at + 44);
    out.writeUInt32LE(e.size, at + 48);
  });
  sha256(out.subarray(0, out.length - 32)).copy(out, out.length - 32);
  return out;
}

/**
 * A pack's index, checked (magic, length, checksum, every entry's lengths): its `count` entries are
 * IDX_ENTRY bytes each from byte 16. EIO naming the file and what is wrong.
 */
export async function readPackIndex(backend: Backend, id: string, cipher: ObjectCipher): Promise<{ data: Buffer; count: number }> {
  const where = `${backend.location}/${names.packIndex(id)}`;
  let data: Buffer;
  try {
    data = await backend.read(names.packIndex(id));
  } catch (e) {
    throw new BlkError('EIO', `pack index ${where} cannot be read: ${(e as Error).message}`);
  }
  return openIdx(data, id, where, cipher);
}

/** A pack index's bytes as stored (sealed in an encrypted repository), opened and checked. */
export function openIdx(stored: Buffer, id: string, where: string, cipher: ObjectCipher): { data: Buffer; count: number } {
  return decodeIdx(cipher.open(stored, aadOf('pack index', names.packIndex(id)), `pack index ${where}`), where);
}

/** Associated data of a sealed record: its chunk's id, flags and size, so a record opens only as itself. */
export function recordAad(digest: Uint8Array, flags: number, size: number): Buffer {
  const aad = Buffer.alloc(14 + 32 + 8);
  aad.write('blksnap record', 0, 'latin1');
  aad.set(digest.subarray(0, 32), 14);
  aad.writeUInt32LE(flags, 46);
  aad.writeUInt32LE(size, 50);
  return aad;
}

/** A pack index's bytes, checked as readPackIndex says; EIO naming `file` and what is wrong. */
export function decodeIdx(data: Buffer, file: string): { data: Buffer; count: number } {
  if (data.length < 48 || !data.subarray(0, 8).equals(IDX_MAGIC)) throw new BlkError('EIO', `${file} is not a pack index`);
  const count = data.readUInt32LE(12);
  if (data.length !== 16 + count * IDX_ENTRY + 32) throw new BlkError('EIO', `pack index ${file} is truncated`);
  if (!sha256(data.subarray(0, data.length - 32)).equals(data.subarray(data.length - 32))) throw new BlkError('EIO', `pack index ${file} fails its checksum`);
  for (let i = 0; i < count; i++) {
    const at = 16 + i * IDX_ENTRY;
    const storedLength = data.readUInt32LE(at + 40);
    const size = data.readUInt32LE(at + 48);
    const sealing = data.readUInt16LE(at + 44) & FLAG_SEALED ? SEAL_OVERHEAD : 0;
    // Readers size their buffers by these lengths: none may exceed what a chunk can be (sealed, its salt, nonce and tag more).
    if (size > MAXIMUM_CHUNK || storedLength > size + sealing) throw new BlkError('EIO', `pack index ${file}: entry ${i} gives ${storedLength} bytes stored for a chunk of ${size} (at most ${MAXIMUM_CHUNK})`);
  }
  return { data, count };
}

/** A checked pack index as entries (digests are views into its bytes). */
export function entriesOf(idx: { data: Buffer; count: number }): PackEntry[] {
  const { data, count } = idx;
  return Array.from({ length: count }, (_, i) => {
    const at = 16 + i * IDX_ENTRY;
    return { digest: data.subarray(at, at + 32), offset: Number(data.readBigUInt64LE(at + 32)), storedLength: data.readUInt32LE(at + 40), flags: data.readUInt16LE(at + 44), size: data.readUInt32LE(at + 48) };
  });
}

/** Where a sealed zstd frame is opened before it is decompressed: this thread's, kept. */
let openedFrames = Buffer.alloc(0);

/**
 * Decodes one record's stored bytes into `into` (its uncompressed size): opened where sealed,
 * decompressed where compressed, and checked against its id; the reason when it fails.
 */
export function decodeRecord(stored: Uint8Array, flags: number, digest: Uint8Array, into: Uint8Array, cipher: ObjectCipher): string | null {
  if (flags & ~KNOWN_FLAGS) return `unknown flags 0x${flags.toString(16)}`;
  if (((flags & FLAG_SEALED) !== 0) !== cipher.isSealed) return cipher.isSealed ? 'a record not sealed in an encrypted repository' : 'a sealed record in a plain repository';
  let payload = stored;
  try {
    if (flags & FLAG_SEALED) {
      const length = stored.length - SEAL_OVERHEAD;
      if (!(flags & FLAG_ZSTD)) {
        // Opened straight into place.
        if (length !== into.length) return `${Math.max(0, length)} bytes stored, ${into.length} expected`;
        cipher.openInto(stored, recordAad(digest, flags, into.length), into, 'the record');
        return cipher.chunkId(into).equals(Buffer.from(digest.buffer, digest.byteOffset, 32)) ? null : 'content does not match its digest';
      }
      if (length < 0) return `${stored.length} bytes stored, fewer than a sealed record's ${SEAL_OVERHEAD}`;
      if (openedFrames.length < length) openedFrames = Buffer.allocUnsafe(Math.max(length, 256 * 1024));
      payload = openedFrames.subarray(0, length);
      cipher.openInto(stored, recordAad(digest, flags, into.length), payload, 'the record');
    }
    if (flags & FLAG_ZSTD) zstdDecompress(payload, into);
    else if (payload.length !== into.length) return `${payload.length} bytes stored, ${into.length} expected`;
    else into.set(payload);
  } catch (e) {
    return (e as Error).message;
  }
  return cipher.chunkId(into).equals(Buffer.from(digest.buffer, digest.byteOffset, 32)) ? null : 'content does not match its digest';
}

/**
 * What a streaming PackWriter hands on, in order: a pack's parts as they fill, then its index (to be
 * written once the pack is whole). `name` is the object's.
 */
export type PackPiece = ({ kind: 'part'; name: string } & FilledPart) | { kind: 'index'; name: string; pack: string; data: Uint8Array };

/** How a streaming PackWriter hands on its packs: parts of `partBytes`, in buffers from `newBuffer` (partBufferBytes long), to `emit`. */
export interface PackStreaming {
  partBytes: number;
  emit: (piece: PackPiece) => void;
  newBuffer?: () => Buffer;
}

interface OpenPack {
  id: string;
  file: AppendFile | PartStream;
  entries: PackEntry[];
}

/** Appends chunks to packs of its own: one writer per worker thread and backup. */
export class PackWriter {
  #backend: Backend;
  #cipher: ObjectCipher;
  #level: number | null;
  #current: OpenPack | null = null;
  /** Packs closed so far (ids). */
  readonly closed: string[] = [];
  /** Packs that filled up: put in place at the next close() (appends are synchronous, putting in place is not). */
  #full: OpenPack[] = [];
  /** Where a streaming writer hands its pieces (null: packs are built in local files and committed). */
  #stream: PackStreaming | null;

  constructor(backend: Backend, cipher: ObjectCipher, level: number | null, stream: PackStreaming | null = null) {
    this.#backend = backend;
    this.#cipher = cipher;
    this.#level = level;
    this.#stream = stream;
  }

  /**
   * Appends a chunk, compressed when that makes it smaller (then sealed, in an encrypted repository);
   * returns where it went. Compressed straight into the pack's staging buffer and sealed there in
   * place: the frame starts `lead` bytes early, so that a raw block's bytes (data zstd cannot shrink,
   * verbatim) are already where the record's data goes, and the stored chunk costs no copy.
   */
  append(digest: Buffer, data: Uint8Array): { pack: string; entry: PackEntry } {
    const level = this.#level;
    const cipher = this.#cipher;
    const pack = this.#open();
    const offset = pack.file.size;
    const bodyAt = RECORD_HEADER + cipher.sealedBodyAt;
    let storedLength = 0;
    let flags = cipher.isSealed ? FLAG_SEALED : 0;
    const room = level === null ? data.length : Math.max(zstdBound(data.length), data.length);
    pack.file.appendInPlace(bodyAt + room + SEAL_OVERHEAD, (into) => {
      let plainLength = data.length;
      if (level === null) into.set(data, bodyAt);
      else {
        const lead = rawBlockLead(data.length);
        const frameAt = bodyAt - lead;
        const frameLength = zstdCompressInto(data, level, into.subarray(frameAt));
        if (frameLength < data.length) {
          if (lead > 0) into.copyWithin(bodyAt, frameAt, frameAt + frameLength);
          plainLength = frameLength;
          flags |= FLAG_ZSTD;
        } else if (!isRawBlockFrame(into, frameAt, frameLength, data.length)) into.set(data, bodyAt);
      }
      storedLength = cipher.sealInPlace(into.subarray(RECORD_HEADER), plainLength, recordAad(digest, flags, data.length));
      writeRecordHeader(into, digest, storedLength, flags, data.length);
      return RECORD_HEADER + storedLength;
    });
    return this.#appended(pack, { digest, offset, storedLength, flags, size: data.length });
  }

  /** Appends a record as it is stored elsewhere (a prune's repack). */
  appendStored(digest: Buffer, stored: Uint8Array, flags: number, size: number): { pack: string; entry: PackEntry } {
    const pack = this.#open();
    const header = Buffer.alloc(RECORD_HEADER);
    writeRecordHeader(header, digest, stored.length, flags, size);
    const entry: PackEntry = { digest, offset: pack.file.size, storedLength: stored.length, flags, size };
    pack.file.append(header);
    pack.file.append(stored);
    return this.#appended(pack, entry);
  }

  #appended(pack: OpenPack, entry: PackEntry): { pack: string; entry: PackEntry } {
    pack.entries.push(entry);
    const id = pack.id;
    if (pack.file.size >= (this.#backend.packBytes ?? PACK_BYTES)) {
      pack.file.finish();
      this.#full.push(pack);
      this.#current = null;
    }
    return { pack: id, entry };
  }

  /** Whether packs filled up and wait for close() to put them in place. */
  get hasFullPacks(): boolean {
    return this.#full.length > 0;
  }

  /**
   * Makes the packs written so far durable and visible: each pack's data synced (its last append),
   * its index written and synced, then the pack put in place and its index after it, so an index
   * never names a pack that is not there.
   */
  async close(): Promise<void> {
    const packs = this.#full.splice(0);
    const open = this.#current;
    this.#current = null;
    if (open) {
      open.file.finish();
      packs.push(open);
    }
    for (const p of packs) {
      if (p.file instanceof PartStream) {
        // Its parts went as they filled (the last with finish() above): the index follows them, in
        // memory of its own (it moves to another thread; a small Buffer shares Node's pool).
        this.#stream?.emit({ kind: 'index', name: names.packIndex(p.id), pack: names.pack(p.id), data: new Uint8Array(this.#cipher.seal(encodeIdx(p.entries), aadOf('pack index', names.packIndex(p.id)))) });
        this.closed.push(p.id);
        continue;
      }
      const fd = fs.openSync(this.#backend.stagingPath(names.packIndex(p.id)), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o644);
      try {
        writeFullySync(fd, this.#cipher.seal(encodeIdx(p.entries), aadOf('pack index', names.packIndex(p.id))), 0);
        fs.fdatasyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      await this.#backend.commit(names.pack(p.id));
      await this.#backend.commit(names.packIndex(p.id));
      this.closed.push(p.id);
    }
  }

  #open(): OpenPack {
    if (this.#current) return this.#current;
    const id = randomBytes(16).toString('hex');
    const stream = this.#stream;
    if (stream) {
      const name = names.pack(id);
      this.#current = { id, file: new PartStream(stream.partBytes, (part) => stream.emit({ kind: 'part', name, ...part }), stream.newBuffer), entries: [] };
      return this.#current;
    }
    const staging = this.#backend.stagingPath(names.pack(id));
    fs.mkdirSync(path.dirname(staging), { recursive: true });
    this.#current = { id, file: AppendFile.create(staging), entries: [] };
    return this.#current;
  }
}

const ZSTD_MAGIC = 0xfd2fb528;
/** zstd's largest block: a larger chunk it cannot shrink is cut into several raw blocks. */
const ZSTD_BLOCK_MAXIMUM = 128 * 1024;

/** The code of the content size field in a single-segment frame header (RFC 8878 3.1.1.1.1): the field takes 1 << code bytes. */
function contentSizeCode(size: number): number {
  return size < 256 ? 0 : size < 65536 + 256 ? 1 : 2;
}

/**
 * Bytes before the content of a frame of one raw block of `size` bytes, as libzstd writes it for a
 * chunk of known size (magic, a single-segment header with the content size, no checksum, the
 * block's header); 0 where the chunk takes more than one block.
 */
export function rawBlockLead(size: number): number {
  if (size > ZSTD_BLOCK_MAXIMUM) return 0;
  return 4 + 1 + (1 << contentSizeCode(size)) + 3;
}

/** Whether `into` holds, at `at`, exactly such a frame (rawBlockLead) of `size` bytes: its content then follows the lead verbatim. */
export function isRawBlockFrame(into: Uint8Array, at: number, frameLength: number, size: number): boolean {
  const lead = rawBlockLead(size);
  if (lead === 0 || frameLength !== lead + size) return false;
  const view = Buffer.from(into.buffer, into.byteOffset + at, lead);
  // Descriptor: the content size code in the top two bits, single segment (0x20), no checksum, no
  // dictionary; then the content size (stored less 256 in two bytes).
  const code = contentSizeCode(size);
  if (view.readUInt32LE(0) !== ZSTD_MAGIC || view[4] !== ((code << 6) | 0x20)) return false;
  if (view.readUIntLE(5, 1 << code) !== (code === 1 ? size - 256 : size)) return false;
  // Block header: last block (bit 0), type raw (bits 1-2 zero), its size from bit 3.
  return view.readUIntLE(lead - 3, 3) === size * 8 + 1;
}

function writeRecordHeader(into: Uint8Array, digest: Buffer, storedLength: number, flags: number, size: number): void {
  const view = Buffer.from(into.buffer, into.byteOffset, RECORD_HEADER);
  digest.copy(view, 0);
  view.writeUInt32LE(storedLength, 32);
  view.writeUInt32LE(flags, 36);
  view.writeUInt32LE(size, 40);
  view.fill(0, 44, RECORD_HEADER);
}
