// Owns a device's index in a backup: the SHA-256 of every chunk in order, kept as a tree of digest
// pages stored under their own digest (pages/), so backups share every page that did not change and
// an incremental writes index data in proportion to its change. The root (backups/ID/DEVICE.index)
// lists the pages and is checked by its own SHA-256.
import { BlkError } from '../errors.js';
import { tracking } from '../params.js';
import { TaskWindow } from '../util/task-window.js';
import type { Backend } from './backend.js';
import { aadOf, type ObjectCipher } from './cipher.js';
import { sha256 } from './digest.js';
import { names } from './layout.js';

/** Digests per page: 16 KiB pages. */
export const PAGE_DIGESTS = 512;
const MAGIC = Buffer.from('BLKSNAPX', 'latin1');
/** magic (8) · version (4) · page count (4) · chunk count (8) · chunk size (8) · device size (8). */
const ROOT_HEADER = 40;
/** The largest device an index describes: 2^21 tracking blocks of the largest size. */
const MAXIMUM_CHUNKS = tracking.blockMaximumCount;

export interface DeviceIndex {
  size: number;
  chunkSize: number;
  /** chunkCount × 32 bytes; an all-zero digest is a chunk of zeros. */
  digests: Buffer;
}

/** A device index as read back: with the names of its pages, each checked against its digest. */
export interface ReadIndex extends DeviceIndex {
  pages: string[];
}

export interface IndexRoot {
  size: number;
  chunkSize: number;
  count: number;
  pages: string[];
}

export function chunkCountOf(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

/**
 * Writes the pages the repository lacks and returns the root file's bytes (the caller stages them
 * beside the manifest) and the bytes of pages newly written. Pages are durable at the backend's
 * sync, before the manifest. A page already there is used only when its bytes are right: one put in
 * place by a writer that crashed before its sync may be empty. Pages in `checked` (read and checked
 * by this writer, or written by it) are not read again; the set grows by what this call writes.
 */
export async function writeIndex(backend: Backend, cipher: ObjectCipher, index: DeviceIndex, { checked = new Set<string>(), marked = new Set<string>() }: { checked?: Set<string>; marked?: Set<string> } = {}): Promise<{ root: Buffer; pageBytes: number }> {
  const count = chunkCountOf(index.size, index.chunkSize);
  const pageCount = Math.ceil(count / PAGE_DIGESTS);
  const root = Buffer.alloc(ROOT_HEADER + pageCount * 32 + 32);
  MAGIC.copy(root, 0);
  root.writeUInt32LE(1, 8);
  root.writeUInt32LE(pageCount, 12);
  root.writeBigUInt64LE(BigInt(count), 16);
  root.writeBigUInt64LE(BigInt(index.chunkSize), 24);
  root.writeBigUInt64LE(BigInt(index.size), 32);
  let pageBytes = 0;
  const window = new TaskWindow(backend.requestsAtOnce);
  try {
    for (let p = 0; p < pageCount; p++) {
      const page = index.digests.subarray(p * PAGE_DIGESTS * 32, Math.min((p + 1) * PAGE_DIGESTS, count) * 32);
      const hex = cipher.pageName(page);
      root.write(hex, ROOT_HEADER + p * 32, 'hex');
      if (checked.has(hex)) continue;
      checked.add(hex);
      const aad = aadOf('page', names.page(hex));
      await window.add(
        (async () => {
          // A page a prune marked is written again (its new time tells the prune it is in use). In an
          // object store a look costs a request as a write does, and a page not in the base is
          // nearly always new: written without a look.
          const there = marked.has(hex) || backend.spec.kind === 's3' ? null : await backend.read(names.page(hex)).catch(() => null);
          if (there && isSameContent(cipher, there, page, aad)) return;
          const sealed = cipher.seal(page, aad);
          await backend.write(names.page(hex), sealed);
          pageBytes += sealed.length;
        })(),
      );
    }
  } finally {
    await window.settle();
  }
  await window.drain();
  sha256(root.subarray(0, root.length - 32)).copy(root, root.length - 32);
  return { root, pageBytes };
}

/** Whether a page found under its name holds exactly `page` (one a crashed writer left may be empty). */
function isSameContent(cipher: ObjectCipher, there: Buffer, page: Buffer, aad: Buffer): boolean {
  try {
    return cipher.open(there, aad, 'page').equals(page);
  } catch {
    return false;
  }
}

/** A root file's bytes, checked (magic, length, checksum, numbers that agree); EIO naming `rootFile` and what is wrong. */
export function decodeIndexRoot(root: Buffer, rootFile: string): IndexRoot {
  if (root.length < ROOT_HEADER + 32 || !root.subarray(0, 8).equals(MAGIC)) throw new BlkError('EIO', `${rootFile} is not a blksnap index`);
  const pageCount = root.readUInt32LE(12);
  if (root.length !== ROOT_HEADER + pageCount * 32 + 32) throw new BlkError('EIO', `index ${rootFile} is truncated`);
  if (!sha256(root.subarray(0, root.length - 32)).equals(root.subarray(root.length - 32))) throw new BlkError('EIO', `index ${rootFile} fails its checksum`);
  const count = Number(root.readBigUInt64LE(16));
  const chunkSize = Number(root.readBigUInt64LE(24));
  const size = Number(root.readBigUInt64LE(32));
  // Readers allocate by these numbers: they must agree with each other and with the pages listed.
  const isChunkSize = chunkSize >= 2 ** tracking.blockMinimumShift && chunkSize <= 2 ** tracking.blockMaximumShift && (chunkSize & (chunkSize - 1)) === 0;
  if (!isChunkSize || !Number.isSafeInteger(size) || count > MAXIMUM_CHUNKS || count !== chunkCountOf(size, chunkSize) || pageCount !== Math.ceil(count / PAGE_DIGESTS)) {
    throw new BlkError('EIO', `index ${rootFile} does not add up: ${count} chunks of ${chunkSize} bytes for ${size} bytes in ${pageCount} pages`);
  }
  const pages: string[] = [];
  for (let p = 0; p < pageCount; p++) pages.push(root.toString('hex', ROOT_HEADER + p * 32, ROOT_HEADER + (p + 1) * 32));
  return { count, chunkSize, size, pages };
}

/** Page `p` of a root's list, checked against its digest and placed into `digests`; EIO naming it when it is not what the root says. */
export function placePage(page: Buffer, root: IndexRoot, p: number, digests: Buffer, rootFile: string, cipher: ObjectCipher): void {
  const hex = root.pages[p] as string;
  if (cipher.pageName(page) !== hex) throw new BlkError('EIO', `index page ${hex} of ${rootFile} is damaged`);
  const expected = (Math.min((p + 1) * PAGE_DIGESTS, root.count) - p * PAGE_DIGESTS) * 32;
  if (page.length !== expected) throw new BlkError('EIO', `index page ${hex} of ${rootFile} holds ${page.length} bytes, not ${expected}`);
  page.copy(digests, p * PAGE_DIGESTS * 32);
}

/** A root file, checked; EIO naming it and what is wrong. */
export async function readIndexRoot(backend: Backend, rootName: string, cipher: ObjectCipher): Promise<IndexRoot> {
  const where = `${backend.location}/${rootName}`;
  let bytes: Buffer;
  try {
    bytes = await backend.read(rootName);
  } catch (e) {
    throw new BlkError('EIO', `index ${where} cannot be read: ${(e as Error).message}`);
  }
  return decodeIndexRoot(cipher.open(bytes, aadOf('index root', rootName), `index ${where}`), where);
}

/** A device's whole index, every page checked against its digest, a few pages read at once. */
export async function readIndex(backend: Backend, rootName: string, cipher: ObjectCipher): Promise<ReadIndex> {
  const where = `${backend.location}/${rootName}`;
  const root = await readIndexRoot(backend, rootName, cipher);
  const digests = Buffer.alloc(root.count * 32);
  await TaskWindow.each(root.pages, backend.requestsAtOnce, (hex, p) =>
    backend.read(names.page(hex)).then(
      (page) => placePage(cipher.open(page, aadOf('page', names.page(hex)), `index page ${hex} of ${where}`), root, p, digests, where, cipher),
      () => {
        throw new BlkError('EIO', `index page ${hex} of ${where} is missing`);
      },
    ),
  );
  return { size: root.size, chunkSize: root.chunkSize, digests, pages: root.pages };
}
