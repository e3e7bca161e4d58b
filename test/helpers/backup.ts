// Owns what the backup tests share: a daemon with sparse devices attached and a repository beside them.
import { randomFillSync, randomInt } from 'node:crypto';
import * as path from 'node:path';
import type { NbdClient } from '../../src/client/nbd-client.js';
import type { KeySource } from '../../src/repository/keys.js';
import { Repository } from '../../src/repository/repository.js';
import { TestDaemon } from './daemon.js';
import { sparseFile, tempDir } from './tools.js';

export type Created = { id: string; devices: Array<{ name: string; mode: string; readBytes: number; storedBytes: number; changesNumber: number; generationId: string }> };

/** `count` writes of a block of random bytes each at random block offsets of a device of `size` bytes; the offsets written. */
export async function writeRandomBlocks(nbd: NbdClient, count: number, size: number, block: number): Promise<Set<number>> {
  const touched = new Set<number>();
  for (let i = 0; i < count; i++) {
    const at = randomInt(size / block) * block;
    await nbd.write(at, randomFillSync(Buffer.alloc(block)));
    touched.add(at);
  }
  return touched;
}

/** A key file's key, as `--key-file` gives it. */
export function keyFileSource(key: Buffer, from = 'the test key file'): KeySource {
  return { kind: 'keyfile', key, from };
}

/**
 * Runs `body` with a daemon (its state in a new temp directory) that has these sparse devices attached
 * by name, and a new repository there (encrypted under `key` when one is given).
 */
export async function withDaemon(devices: Record<string, number>, body: (daemon: TestDaemon, repo: Repository, dir: string) => Promise<void>, args: string[] = [], key: KeySource | null = null): Promise<void> {
  const { dir, remove } = tempDir('blksnap-backup-');
  const attach = Object.entries(devices).flatMap(([name, size]) => ['--attach', `${sparseFile(path.join(dir, name), size)}=${name}`]);
  const daemon = await TestDaemon.startIn(dir, remove, [...attach, ...args]);
  try {
    const repo = await Repository.init(path.join(dir, 'repo'), { key });
    await body(daemon, repo, dir);
  } finally {
    await daemon.stop();
  }
}
