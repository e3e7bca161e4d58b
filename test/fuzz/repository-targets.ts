// Owns the fuzz targets of the repository's parsers, as a hostile repository would feed them:
// manifests, index roots with their pages, pack indexes, and pack records, plain and sealed. Every input must end in
// a result that holds up, or in an EIO that names the file (or, for a record, a reason): never
// another exception, never memory beyond a bound.
import { sha256 } from '../../src/repository/digest.js';
import { decodeIndexRoot, PAGE_DIGESTS, placePage } from '../../src/repository/digest-index.js';
import { decodeManifest, encodeManifest, type Manifest } from '../../src/repository/manifest.js';
import { decodeIdx, decodeRecord, encodeIdx, FLAG_SEALED, FLAG_ZSTD, type PackEntry, recordAad } from '../../src/repository/pack.js';
import { BlkError } from '../../src/errors.js';
import { cipherOf, PLAIN, SEAL_OVERHEAD } from '../../src/repository/cipher.js';
import { zstdBound, zstdCompressInto } from '../../src/os/zstd.js';
import { type Field, mutate, type Rng } from './mutate.js';
import type { FuzzTarget } from './target.js';

/** Heap a parser may hold after any input: the largest thing it may read is an index of 64 MiB. */
const HEAP_BOUND = 768 * 1024 * 1024;

function fail(what: string): never {
  throw new Error(what);
}

/** An error a hostile file may cause: EIO naming `name`. Anything else fails the input. */
function expectEio(e: unknown, name: string): void {
  if (!(e instanceof BlkError) || e.code !== 'EIO') fail(`not an EIO BlkError: ${e instanceof Error ? e.stack : String(e)}`);
  if (!e.message.includes(name)) fail(`the error does not name ${name}: ${e.message}`);
}

function boundedHeap(): Promise<void> {
  const used = process.memoryUsage().heapUsed;
  return used > HEAP_BOUND ? Promise.reject(new Error(`heap ${used} bytes after the inputs, more than ${HEAP_BOUND}`)) : Promise.resolve();
}

function target(name: string, run: (rng: Rng) => void): () => FuzzTarget {
  return () => ({
    name,
    async open() {},
    async run(rng) {
      run(rng);
    },
    check: boundedHeap,
    async close() {},
  });
}

// ---- manifests ----------------------------------------------------------------------------------

const WEIRD = [null, -1, 0.5, 2 ** 53, '', '../x', 'a/b', '.hidden', [], {}, true, 'x'.repeat(300), 1e308];

function manifestSeed(rng: Rng): Manifest {
  const count = rng.int(4);
  return {
    version: 1,
    id: '20261201T000000.000Z-abcd',
    time: '2026-12-01T00:00:00.000Z',
    devices: Array.from({ length: count }, (_, i) => ({
      name: `disk${i}.img`,
      size: (1 + rng.int(1 << 20)) * 4096,
      chunkSize: 65536,
      mode: rng.pick(['full', 'incremental'] as const),
      generationId: 'd2f1c5a0-0000-4000-8000-000000000000',
      changesNumber: rng.int(256),
      readBytes: rng.int(1 << 30),
      storedBytes: rng.int(1 << 30),
      index: `disk${i}.img.index`,
    })),
  };
}

/** A manifest with one field set to something this program never writes, sealed again (a careless or hostile writer). */
function resealedWithWeirdField(rng: Rng): Buffer {
  const m = manifestSeed(rng) as unknown as Record<string, unknown> & { devices: Array<Record<string, unknown>> };
  const holder: Record<string, unknown> = m.devices.length > 0 && rng.chance(0.7) ? (rng.pick(m.devices) as Record<string, unknown>) : m;
  const keys = Object.keys(holder);
  holder[rng.chance(0.9) ? rng.pick(keys) : 'extra'] = rng.pick(WEIRD);
  if (rng.chance(0.1)) m.devices = rng.pick(WEIRD) as never;
  return encodeManifest(m as unknown as Manifest);
}

export const manifestTarget = target('repository manifest', (rng) => {
  const file = '/repo/backups/fuzz/manifest.json';
  const input = rng.chance(0.5) ? resealedWithWeirdField(rng) : mutate(rng, encodeManifest(manifestSeed(rng)), []);
  let m: Manifest;
  try {
    m = decodeManifest(input, file);
  } catch (e) {
    return expectEio(e, file);
  }
  // Accepted: it must be what the readers rely on.
  if (m.version !== 1 || !Array.isArray(m.devices)) fail(`accepted a manifest of the wrong shape: ${JSON.stringify(m).slice(0, 200)}`);
  for (const d of m.devices) {
    if (typeof d.name !== 'string' || d.name.includes('/') || d.name.startsWith('.')) fail(`accepted a device name ${JSON.stringify(d.name)}`);
    if (typeof d.index !== 'string' || d.index.includes('/') || d.index.startsWith('.')) fail(`accepted an index ${JSON.stringify(d.index)}`);
    for (const k of ['size', 'chunkSize', 'changesNumber', 'readBytes', 'storedBytes'] as const) if (!Number.isSafeInteger(d[k]) || d[k] < 0) fail(`accepted ${k} ${d[k]}`);
  }
});

// ---- index roots and pages ------------------------------------------------------------------------

const ROOT_HEADER = 40;

/** A root and its pages for `count` chunks of 64 KiB. */
function indexSeed(rng: Rng, count: number): { root: Buffer; pages: Buffer[] } {
  const digests = rng.bytes(count * 32);
  const pages: Buffer[] = [];
  for (let at = 0; at < count; at += PAGE_DIGESTS) pages.push(digests.subarray(at * 32, Math.min(count, at + PAGE_DIGESTS) * 32));
  const root = Buffer.alloc(ROOT_HEADER + pages.length * 32 + 32);
  root.write('BLKSNAPX', 0, 'latin1');
  root.writeUInt32LE(1, 8);
  root.writeUInt32LE(pages.length, 12);
  root.writeBigUInt64LE(BigInt(count), 16);
  root.writeBigUInt64LE(65536n, 24);
  root.writeBigUInt64LE(BigInt(count * 65536 - rng.int(65536)), 32);
  for (const [i, p] of pages.entries()) sha256(p).copy(root, ROOT_HEADER + i * 32);
  sha256(root.subarray(0, root.length - 32)).copy(root, root.length - 32);
  return { root, pages };
}

const ROOT_FIELDS: Field[] = [
  { at: 8, width: 4, endian: 'le' },
  { at: 12, width: 4, endian: 'le' },
  { at: 16, width: 8, endian: 'le' },
  { at: 24, width: 8, endian: 'le' },
  { at: 32, width: 8, endian: 'le' },
];

/** The checksum at the end made right again: the fields behind it are what a hostile writer controls. */
function resealed(b: Buffer): Buffer {
  if (b.length < 32) return b;
  sha256(b.subarray(0, b.length - 32)).copy(b, b.length - 32);
  return b;
}

export const indexTarget = target('repository index root and pages', (rng) => {
  const rootFile = '/repo/backups/fuzz/disk.index';
  const seed = indexSeed(rng, 1 + rng.int(3 * PAGE_DIGESTS));
  let root = seed.root;
  let pages = seed.pages;
  if (rng.chance(0.6)) {
    root = mutate(rng, root, ROOT_FIELDS);
    if (rng.chance(0.7)) root = resealed(root);
  } else {
    pages = pages.map((p) => (rng.chance(0.5) ? mutate(rng, p, []) : p));
  }
  let decoded: ReturnType<typeof decodeIndexRoot>;
  try {
    decoded = decodeIndexRoot(root, rootFile);
  } catch (e) {
    return expectEio(e, rootFile);
  }
  if (decoded.count * 32 > 2 ** 21 * 32) fail(`accepted ${decoded.count} chunks`);
  const digests = Buffer.alloc(decoded.count * 32);
  for (let p = 0; p < decoded.pages.length; p++) {
    const page = pages[p] ?? Buffer.alloc(0);
    try {
      placePage(page, decoded, p, digests, rootFile, PLAIN);
    } catch (e) {
      return expectEio(e, rootFile);
    }
  }
});

// ---- pack indexes -------------------------------------------------------------------------------

function idxSeed(rng: Rng): Buffer {
  const entries: PackEntry[] = [];
  let offset = 0;
  for (let i = 0, n = rng.int(6); i < n; i++) {
    const size = 1 + rng.int(65536);
    const storedLength = rng.chance(0.5) ? size : 1 + rng.int(size);
    entries.push({ digest: rng.bytes(32), offset, storedLength, flags: storedLength < size ? FLAG_ZSTD : 0, size });
    offset += 48 + storedLength;
  }
  return encodeIdx(entries);
}

const IDX_FIELDS: Field[] = [{ at: 12, width: 4, endian: 'le' }, ...[0, 1, 2].flatMap((i) => [16 + i * 56 + 32, 16 + i * 56 + 40, 16 + i * 56 + 44, 16 + i * 56 + 48].map((at, k) => ({ at, width: (k === 0 ? 8 : k === 2 ? 2 : 4) as 8 | 2 | 4, endian: 'le' as const })))];

export const packIndexTarget = target('repository pack index', (rng) => {
  const file = '/repo/chunks/fuzz.idx';
  let input = mutate(rng, idxSeed(rng), IDX_FIELDS);
  if (rng.chance(0.7)) input = resealed(input);
  let idx: ReturnType<typeof decodeIdx>;
  try {
    idx = decodeIdx(input, file);
  } catch (e) {
    return expectEio(e, file);
  }
  for (let i = 0; i < idx.count; i++) {
    const at = 16 + i * 56;
    const stored = idx.data.readUInt32LE(at + 40);
    const size = idx.data.readUInt32LE(at + 48);
    const sealing = idx.data.readUInt16LE(at + 44) & FLAG_SEALED ? SEAL_OVERHEAD : 0;
    if (size > 2 ** 26 || stored > size + sealing) fail(`accepted entry ${i}: ${stored} stored for ${size}`);
  }
});

// ---- pack records -------------------------------------------------------------------------------

/** A record's stored bytes as a writer makes them: a zstd frame (or the bytes as they are) of a chunk of some shape. */
function recordSeed(rng: Rng): { stored: Buffer; flags: number; size: number; digest: Buffer } {
  const size = 1 + rng.int(64 * 1024);
  const chunk = rng.chance(0.5) ? Buffer.alloc(size, rng.u32() & 0xff) : rng.bytes(size);
  if (rng.chance(0.3)) rng.bytes(Math.min(size, 64)).copy(chunk, rng.int(size));
  const digest = sha256(chunk);
  if (rng.chance(0.3)) return { stored: chunk, flags: 0, size, digest };
  const out = Buffer.alloc(zstdBound(size));
  const n = zstdCompressInto(chunk, 1 + rng.int(5), out);
  return { stored: out.subarray(0, n), flags: FLAG_ZSTD, size, digest };
}

export const packRecordTarget = target('repository pack record', (rng) => {
  const seed = recordSeed(rng);
  const stored = rng.chance(0.8) ? mutate(rng, seed.stored, [{ at: 4, width: 4, endian: 'le' }, { at: 5, width: 1, endian: 'le' }, { at: 6, width: 8, endian: 'le' }]) : seed.stored;
  const flags = rng.chance(0.1) ? rng.u32() & 0xffff : seed.flags;
  // The size a hostile index claims: within the bound readIdx enforces.
  const size = rng.chance(0.2) ? rng.int(2 ** 17) : seed.size;
  const into = new Uint8Array(size + 64);
  into.fill(0xa5, size);
  let reason: string | null;
  try {
    reason = decodeRecord(stored, flags, seed.digest, into.subarray(0, size), PLAIN);
  } catch (e) {
    fail(`decodeRecord threw instead of giving a reason: ${e instanceof Error ? e.stack : String(e)}`);
  }
  for (let i = size; i < into.length; i++) if (into[i] !== 0xa5) fail(`decodeRecord wrote past its ${size}-byte buffer`);
  const isSame = stored.equals(seed.stored) && flags === seed.flags && size === seed.size;
  if (isSame && reason !== null) fail(`a sound record refused: ${reason}`);
  if (!isSame && reason === null && !sha256(into.subarray(0, size)).equals(seed.digest)) fail('a damaged record passed');
});

/** One repository's cipher for the sealed records: a hostile repository holds records sealed by whoever. */
const fuzzCipher = cipherOf(Buffer.alloc(32, 7));

export const sealedRecordTarget = target('repository sealed record', (rng) => {
  const seed = recordSeed(rng);
  const plain = seed.stored;
  const chunk = Buffer.alloc(seed.size);
  // The record as an encrypted repository writes it: the chunk id keyed, the stored bytes sealed to the id, flags and size.
  if (seed.flags === FLAG_ZSTD) decodeRecord(seed.stored, FLAG_ZSTD, seed.digest, chunk, PLAIN);
  else chunk.set(seed.stored);
  const id = fuzzCipher.chunkId(chunk);
  const flags = seed.flags | FLAG_SEALED;
  const sealed = fuzzCipher.seal(plain, recordAad(id, flags, seed.size));
  const stored = rng.chance(0.8) ? mutate(rng, sealed, []) : sealed;
  const claimedFlags = rng.chance(0.1) ? rng.u32() & 0xffff : flags;
  const size = rng.chance(0.2) ? rng.int(2 ** 17) : seed.size;
  const into = new Uint8Array(size + 64);
  into.fill(0xa5, size);
  let reason: string | null;
  try {
    reason = decodeRecord(stored, claimedFlags, id, into.subarray(0, size), fuzzCipher);
  } catch (e) {
    fail(`decodeRecord threw instead of giving a reason: ${e instanceof Error ? e.stack : String(e)}`);
  }
  for (let i = size; i < into.length; i++) if (into[i] !== 0xa5) fail(`decodeRecord wrote past its ${size}-byte buffer`);
  const isSame = stored.equals(sealed) && claimedFlags === flags && size === seed.size;
  if (isSame && reason !== null) fail(`a sound sealed record refused: ${reason}`);
  if (!isSame && reason === null) fail('a changed sealed record opened');
});

export const REPOSITORY_TARGETS = [manifestTarget, indexTarget, packIndexTarget, packRecordTarget, sealedRecordTarget];
