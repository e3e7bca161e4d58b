// Owns the mounts a test makes: each one is recorded and unmounted in cleanup, even when the test failed.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { check, run, tempDir } from './tools.js';

export class Mounts {
  #mounted: string[] = [];
  readonly base: string;

  constructor(base: string) {
    this.base = base;
  }

  async mount(device: string, name: string, options: string[] = []): Promise<string> {
    const dir = path.join(this.base, name);
    fs.mkdirSync(dir, { recursive: true });
    await check('mount', [...(options.length ? ['-o', options.join(',')] : []), device, dir]);
    this.#mounted.push(dir);
    return dir;
  }

  async umount(dir: string): Promise<void> {
    await check('umount', [dir]);
    this.#mounted = this.#mounted.filter((d) => d !== dir);
  }

  /** Unmounts whatever is still mounted (lazily, so a hung test cannot block cleanup). */
  async cleanup(): Promise<void> {
    for (const dir of this.#mounted.reverse()) await run('umount', ['-l', dir]);
    this.#mounted = [];
  }
}

/** Whether this process may mount (root); tests that need a mount skip with this reason otherwise. */
export const mountSkip = process.getuid?.() !== 0 ? 'needs root to mount' : false;

/**
 * Runs `body` in a fresh ramfs mount (a filesystem that refuses O_DIRECT), unmounted and removed
 * after, even when `body` fails.
 */
export async function onRamfs<T>(body: (dir: string) => Promise<T> | T): Promise<T> {
  const tmp = tempDir();
  await check('mount', ['-t', 'ramfs', 'ramfs', tmp.dir]);
  try {
    return await body(tmp.dir);
  } finally {
    await run('umount', [tmp.dir]);
    tmp.remove();
  }
}

export async function mkfs(fsType: 'ext4' | 'xfs', device: string): Promise<void> {
  await check(fsType === 'ext4' ? 'mkfs.ext4' : 'mkfs.xfs', fsType === 'ext4' ? ['-q', '-F', device] : ['-q', '-f', device]);
}

/** Writes `count` files of random content and returns name -> sha256. */
export function writeFiles(dir: string, prefix: string, count: number, size = 256 * 1024): Map<string, string> {
  const sums = new Map<string, string>();
  for (let i = 0; i < count; i++) {
    const data = Buffer.alloc(size);
    for (let j = 0; j < size; j += 4) data.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, j);
    const name = `${prefix}-${i}.bin`;
    fs.writeFileSync(path.join(dir, name), data);
    sums.set(name, createHash('sha256').update(data).digest('hex'));
  }
  return sums;
}

/** name -> sha256 of every regular file in a directory (lost+found left out). */
export function checksums(dir: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const name of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, name);
    if (fs.statSync(p).isFile()) sums.set(name, createHash('sha256').update(fs.readFileSync(p)).digest('hex'));
  }
  return sums;
}
