// Owns a device's index in a backup: the SHA-256 of every chunk in order, kept as a tree of digest
// pages stored under their own digest (pages/), so backups share every page that did not change and
// an incremental writes index data in proportion to its change. The root (backups/ID/DEVICE.index)
// lists the pages and is checked by its own SHA-256.
import * as fs from 'node:fs';
import { BlkError } from '../errors.js';
import { tracking } from '../params.js';
import { sha256, writeFileAtomically } from './chunk-file.js';
import { layout } from './layout.js';
import { TaskWindow } from '../util/task-window.js';

/** Digests per page: 16 KiB pages. */
export const PAGE_DIGESTS = 512;
const MAGIC = Buffer.from('BLKSNAPX', 'latin1');
/** magic (8) · version (4) · page count (4) · chunk count (8) · chunk size (8) · device size (8). */
const ROOT_HEADER = 40;

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

export function chunkCountOf(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

/**
 * Writes the pages the repository lacks and the root file; returns the bytes of pages newly written.
 * Pages and root are durable at the caller's syncfs, before the manifest. A page already there is
 * used only when its bytes are right: one renamed into place by a writer that crashed before its
 * syncfs may be empty. Pages in `checked` (read and checked by this writer, or written by it) are
 * not read again; the set grows by what this call writes.
 */
export function writeIndex(repo: string, rootFile: string, index: DeviceIndex, checked: Set<string> = new Set()): number {
  const count = chunkCountOf(index.size, index.chunkSize);
  const pageCount = Math.ceil(count / PAGE_DIGESTS);
  const root = Buffer.alloc(ROOT_HEADER + pageCount * 32 + 32);
  MAGIC.copy(root, 0);
  root.writeUInt32LE(1, 8);
  root.writeUInt32LE(pageCount, 12);
  root.writeBigUInt64LE(BigInt(count), 16);
  root.writeBigUInt64LE(BigInt(index.chunkSize), 24);
  root.writeBigUInt64LE(BigInt(index.size), 32);
  let written = 0;
  for (let p = 0; p < pageCount; p++) {
    const page = index.digests.subarray(p * PAGE_DIGESTS * 32, Math.min((p + 1) * PAGE_DIGESTS, count) * 32);
    const digest = sha256(page);
    digest.copy(root, ROOT_HEADER + p * 32);
    const hex = digest.toString('hex');
    const file = layout.page(repo, hex);
    if (!checked.has(hex) && !holdsExactly(file, page)) {
      writeFileAtomically(file, page);
      written += page.length;
    }
    checked.add(hex);
  }
  sha256(root.subarray(0, root.length - 32)).copy(root, root.length - 32);
  writeFileAtomically(rootFile, root);
  return written + root.length;
}

/** Whether `file` exists and holds exactly `bytes`. */
function holdsExactly(file: string, bytes: Buffer): boolean {
  try {
    return fs.readFileSync(file).equals(bytes);
  } catch {
    return false;
  }
}

/** The page digests a root file lists, checked; EIO naming what is wrong. */
export function readIndexRoot(rootFile: string): IndexRoot {
  return decodeIndexRoot(readOrEio(() => fs.readFileSync(rootFile), `index ${rootFile}`), rootFile);
}

export interface IndexRoot {
  size: number;
  chunkSize: number;
  count: number;
  pages: string[];
}

/** The largest device an index describes: 2^21 tracking blocks of the largest size. */
const MAXIMUM_CHUNKS = tracking.blockMaximumCount;

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
export function placePage(page: Buffer, root: IndexRoot, p: number, digests: Buffer, rootFile: string): void {
  const hex = root.pages[p] as string;
  if (sha256(page).toString('hex') !== hex) throw new BlkError('EIO', `index page ${hex} of ${rootFile} is damaged`);
  const expected = (Math.min((p + 1) * PAGE_DIGESTS, root.count) - p * PAGE_DIGESTS) * 32;
  if (page.length !== expected) throw new BlkError('EIO', `index page ${hex} of ${rootFile} holds ${page.length} bytes, not ${expected}`);
  page.copy(digests, p * PAGE_DIGESTS * 32);
}

function readOrEio(read: () => Buffer, what: string): Buffer {
  try {
    return read();
  } catch (e) {
    throw new BlkError('EIO', `${what} cannot be read: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

/** A device's whole index, every page checked against its digest. */
export function readIndex(repo: string, rootFile: string): ReadIndex {
  const root = readIndexRoot(rootFile);
  const digests = Buffer.alloc(root.count * 32);
  root.pages.forEach((hex, p) => {
    let page: Buffer;
    try {
      page = fs.readFileSync(layout.page(repo, hex));
    } catch {
      throw new BlkError('EIO', `index page ${hex} of ${rootFile} is missing`);
    }
    placePage(page, root, p, digests, rootFile);
  });
  return { size: root.size, chunkSize: root.chunkSize, digests, pages: root.pages };
}

/** readIndex in the thread pool, a few pages at a time: for the daemon, whose event loop a slow repository must not hold. */
export async function readIndexAsync(repo: string, rootFile: string): Promise<DeviceIndex> {
  let bytes: Buffer;
  try {
    bytes = await fs.promises.readFile(rootFile);
  } catch (e) {
    throw new BlkError('EIO', `index ${rootFile} cannot be read: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  const root = decodeIndexRoot(bytes, rootFile);
  const digests = Buffer.alloc(root.count * 32);
  const window = new TaskWindow(8);
  try {
    for (let p = 0; p < root.pages.length; p++) {
      const hex = root.pages[p] as string;
      await window.add(
        fs.promises.readFile(layout.page(repo, hex)).then(
          (page) => placePage(page, root, p, digests, rootFile),
          () => {
            throw new BlkError('EIO', `index page ${hex} of ${rootFile} is missing`);
          },
        ),
      );
    }
  } finally {
    await window.settle();
  }
  await window.drain();
  return { size: root.size, chunkSize: root.chunkSize, digests };
}
