// Owns opening what a snapshot's difference storage is kept in: a regular file (refused when it holds
// data, unless forced), an unnamed file in a directory (gone with the snapshot), or a block device.
// Growing a file store is the store's own grow(): real allocation (fallocate).
import * as path from 'node:path';
import * as fs from 'node:fs';
import { BlkError, toBlkError } from '../errors.js';
import { openUnnamedFile } from '../os/async-fs.js';
import { diffStorageIo } from '../params.js';
import { FileStorage } from './file-storage.js';

export type DiffStoreKind = 'file' | 'directory' | 'block';

/**
 * Opens the store behind `target`, nothing synchronous on the path (it may lie where only this event
 * loop serves the blocks). A regular file that holds data would be emptied: refused (EEXIST) unless
 * `force`, since that data may be somebody's.
 */
export async function openDiffStore(target: string, options: { force: boolean }): Promise<{ store: FileStorage; kind: DiffStoreKind }> {
  let st: fs.Stats;
  let real: string;
  try {
    st = await fs.promises.stat(target);
    real = await fs.promises.realpath(target);
  } catch (e) {
    throw new BlkError(toBlkError(e).code, `difference storage ${target}: ${toBlkError(e).message}`);
  }
  if (st.isDirectory()) {
    let fd: number;
    try {
      fd = await openUnnamedFile(target);
    } catch (e) {
      throw new BlkError(toBlkError(e).code, `cannot create an unnamed file in ${target}: ${toBlkError(e).message}`);
    }
    return { store: FileStorage.adopt(path.join(real, '(unnamed)'), fd, false, diffStorageIo), kind: 'directory' };
  }
  const store = await FileStorage.open(target, diffStorageIo);
  const kind: DiffStoreKind = store.can.isBlockDevice ? 'block' : 'file';
  if (kind === 'file' && !options.force) {
    try {
      await refuseFileWithData(store, target);
    } catch (e) {
      await store.close();
      throw e;
    }
  }
  return { store, kind };
}

async function refuseFileWithData(store: FileStorage, target: string): Promise<void> {
  if (store.size === 0) return;
  const data = (await store.extents(0, store.size, 4)).find((e) => !e.isHole);
  if (data) throw new BlkError('EEXIST', `difference storage ${target} holds data (from offset ${data.offset}), which the snapshot would overwrite; give an empty file, a directory or a block device, or --force`, { path: target });
}
