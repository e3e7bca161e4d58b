// Owns the directories a daemon keeps its sockets, pid file and state in: its own, and nobody else's to
// write, so no other user can plant a symlink, a fake socket or a state file there.
import * as fs from 'node:fs';
import { BlkError } from '../errors.js';

/**
 * Makes `dir` (mode 0700) if it is missing, then refuses it (EACCES, naming why) unless it is a
 * real directory, owned by this process's user, and writable by nobody else. A directory another
 * user made first (a shared /tmp path, say) is refused, never used.
 */
export function ensurePrivateDirectory(dir: string, purpose: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (!st.isDirectory()) throw new BlkError('EACCES', `${purpose} ${dir} is not a directory (a symlink?); refusing it`, { path: dir });
  if (st.uid !== uid) throw new BlkError('EACCES', `${purpose} ${dir} belongs to uid ${st.uid}, not to this daemon's uid ${uid}; refusing it`, { path: dir });
  if ((st.mode & 0o022) !== 0) {
    throw new BlkError('EACCES', `${purpose} ${dir} is writable by ${st.mode & 0o002 ? 'every user' : 'its group'} (mode ${(st.mode & 0o7777).toString(8)}); refusing it (chmod go-w)`, { path: dir });
  }
}

/** O_NOFOLLOW: a file the daemon opens by name in its own directories is never a symlink's target. */
export const NO_FOLLOW = fs.constants.O_NOFOLLOW;

/** A small file of the daemon's own, read without following a symlink planted in its place. */
export function readOwnFile(file: string): string {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | NO_FOLLOW);
  try {
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes a small file of the daemon's own in place; a symlink in its place is refused (ELOOP), never followed. */
export function writeOwnFile(file: string, text: string, mode = 0o600): void {
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | NO_FOLLOW, mode);
  try {
    fs.writeSync(fd, text);
  } finally {
    fs.closeSync(fd);
  }
}
