// Owns the names of a repository's objects (docs/repository-format.md): chunks in packs with their
// indexes, index pages under their SHA-256, one folder per backup with its manifest and device
// index roots. Names are relative to the repository; a backend stores them.

export const names = {
  config: 'config.json',
  chunks: 'chunks/',
  pack: (id: string): string => `chunks/${id}.pack`,
  packIndex: (id: string): string => `chunks/${id}.idx`,
  pages: 'pages/',
  pageFolder: (sub: string): string => `pages/${sub}`,
  page: (hex: string): string => `pages/${hex.slice(0, 2)}/${hex}`,
  backups: 'backups/',
  backup: (id: string): string => `backups/${id}/`,
  manifest: (id: string): string => `backups/${id}/manifest.json`,
  /** A device's index root, beside its backup's manifest. */
  indexRoot: (id: string, file: string): string => `backups/${id}/${file}`,
  /** A backup being written: invisible (no manifest under backups/ID) until committed. */
  partialBackup: (id: string, pid: number): string => `backups/.partial-${id}-${pid}/`,
};

/** The index root file of a device in its backup. */
export function indexFileOf(device: string): string {
  return `${device}.index`;
}

/** Temporary names carry this and the writer's pid, so a sweep knows whose they are. */
export const TEMP_MARK = '.tmp.';

/** A backup id: its UTC time to the millisecond and a random tail, so ids sort by time. */
export function newBackupId(now: Date): string {
  const t = now.toISOString().replace(/[-:]/g, '');
  return `${t}-${Math.random().toString(16).slice(2, 6).padEnd(4, '0')}`;
}

export const BACKUP_ID_PATTERN = /^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{4}$/;

/** A device name as a backup may record it: a file name of its own, never a path. */
export function isDeviceName(name: string): boolean {
  return name !== '' && !name.includes('/') && !name.includes('\0') && !name.startsWith('.');
}
