// Owns what the backup tests share: a daemon with sparse devices attached and a repository beside them.
import * as path from 'node:path';
import { Repository } from '../../src/repository/repository.js';
import { TestDaemon } from './daemon.js';
import { sparseFile, tempDir } from './tools.js';

export type Created = { id: string; devices: Array<{ name: string; mode: string; readBytes: number; storedBytes: number; changesNumber: number; generationId: string }> };

/** Runs `body` with a daemon (its state in a new temp directory) that has these sparse devices attached by name, and a new repository there. */
export async function withDaemon(devices: Record<string, number>, body: (daemon: TestDaemon, repo: Repository, dir: string) => Promise<void>, args: string[] = []): Promise<void> {
  const { dir, remove } = tempDir('blksnap-backup-');
  const attach = Object.entries(devices).flatMap(([name, size]) => ['--attach', `${sparseFile(path.join(dir, name), size)}=${name}`]);
  const daemon = await TestDaemon.startIn(dir, remove, [...attach, ...args]);
  try {
    const repo = await Repository.init(path.join(dir, 'repo'));
    await body(daemon, repo, dir);
  } finally {
    await daemon.stop();
  }
}
