// Owns finding out, without blocking the event loop, which file or block device a path is and what it lies on.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** "major:minor" of a device number as stat(2) gives it (st_dev or st_rdev). */
export function deviceNumberText(dev: number): string {
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  return `${major}:${minor}`;
}

export interface PathIdentity {
  /** The path as given. */
  path: string;
  kind: 'file' | 'block' | 'directory' | 'other';
  /** The filesystem it lies on ("major:minor" of st_dev). */
  filesystem: string;
  /** The block device it is ("major:minor" of st_rdev), for block devices. */
  blockDevice: string | null;
  dev: number;
  ino: number;
}

/**
 * stat(2) in the thread pool: a path may lie on a filesystem whose blocks only this very process
 * serves (a loop device over one of its FUSE files), and a synchronous stat there, on a cold
 * cache, waits for the event loop it blocks.
 */
export async function identifyPath(p: string): Promise<PathIdentity> {
  const st = await fs.promises.stat(p);
  const kind = st.isFile() ? 'file' : st.isBlockDevice() ? 'block' : st.isDirectory() ? 'directory' : 'other';
  return { path: p, kind, filesystem: deviceNumberText(st.dev), blockDevice: kind === 'block' ? deviceNumberText(st.rdev) : null, dev: st.dev, ino: st.ino };
}

/** What a block device ("major:minor") stands on: a loop device's backing file, a partition's whole disk. */
export async function blockDeviceParent(deviceNumber: string): Promise<{ backingFile: string } | { wholeDisk: string } | null> {
  const sys = `/sys/dev/block/${deviceNumber}`;
  try {
    const backing = (await fs.promises.readFile(path.join(sys, 'loop/backing_file'), 'utf8')).trim();
    if (backing) return { backingFile: backing.replace(/ \(deleted\)$/, '') };
  } catch {
    // not a loop device, or not bound
  }
  try {
    await fs.promises.access(path.join(sys, 'partition'));
    const parent = (await fs.promises.readFile(path.join(sys, '../dev'), 'utf8')).trim();
    if (parent) return { wholeDisk: parent };
  } catch {
    // not a partition
  }
  return null;
}

/** The loop devices (/dev/loopN) whose backing file is the file of this dev and inode: writing it goes behind them. */
export async function loopDevicesBackedBy(dev: number, ino: number): Promise<string[]> {
  const names = await fs.promises.readdir('/sys/block').catch(() => [] as string[]);
  const found: string[] = [];
  for (const name of names.filter((n) => /^loop\d+$/.test(n))) {
    const backing = await fs.promises.readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '');
    if (backing.trim() === '') continue;
    const st = await fs.promises.stat(backing.trim()).catch(() => null);
    if (st && st.dev === dev && st.ino === ino) found.push(`/dev/${name}`);
  }
  return found;
}
