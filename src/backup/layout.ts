// Owns where everything lives in a backup repository (README "Backup repository layout"): chunks and
// index pages under their SHA-256, one folder per backup with its manifest and device indexes.
import * as path from 'node:path';

/** The digest an index holds for a chunk of zeros, which is never stored. */
export const ZERO_DIGEST = Buffer.alloc(32);

export function isZeroDigest(digests: Uint8Array, at: number): boolean {
  for (let i = at; i < at + 32; i++) if (digests[i] !== 0) return false;
  return true;
}

/** A table slot's hash of the digest at `d[at..at+32)`: a digest is uniform, its first four bytes will do. */
export function digestHash(d: Uint8Array, at: number): number {
  return ((d[at] as number) | ((d[at + 1] as number) << 8) | ((d[at + 2] as number) << 16) | ((d[at + 3] as number) << 24)) >>> 0;
}

export function digestsEqual(a: Uint8Array, aAt: number, b: Uint8Array, bAt: number): boolean {
  for (let i = 0; i < 32; i++) if (a[aAt + i] !== b[bAt + i]) return false;
  return true;
}

export const layout = {
  config: (repo: string): string => path.join(repo, 'config.json'),
  lock: (repo: string): string => path.join(repo, 'lock'),
  chunksDir: (repo: string): string => path.join(repo, 'chunks'),
  pagesDir: (repo: string): string => path.join(repo, 'pages'),
  page: (repo: string, hex: string): string => path.join(repo, 'pages', hex.slice(0, 2), hex),
  backupsDir: (repo: string): string => path.join(repo, 'backups'),
  backup: (repo: string, id: string): string => path.join(repo, 'backups', id),
  manifest: (repo: string, id: string): string => path.join(repo, 'backups', id, 'manifest.json'),
  index: (dir: string, device: string): string => path.join(dir, `${device}.index`),
  /** A backup served as a device (backup_attach) by process `pid`: a prune keeps it while that process lives. */
  hold: (repo: string, id: string, pid: number, tag: string): string => path.join(repo, 'backups', id, `.held-by-${pid}-${tag}`),
  /** A backup being written: invisible (no manifest under backups/ID) until renamed into place. */
  partialBackup: (repo: string, id: string): string => path.join(repo, 'backups', `.partial-${id}-${process.pid}`),
};

/** Temporary names carry this and the writer's pid, so a sweep knows whose they are. */
export const TEMP_MARK = '.tmp.';

/** A backup id: its UTC time to the millisecond and a random tail, so ids sort by time. */
export function newBackupId(now: Date): string {
  const t = now.toISOString().replace(/[-:]/g, '');
  return `${t}-${Math.random().toString(16).slice(2, 6).padEnd(4, '0')}`;
}

export const BACKUP_ID_PATTERN = /^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{4}$/;
