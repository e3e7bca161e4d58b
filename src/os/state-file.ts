// Owns state files that survive a crash whole or not at all: written atomically (write, fsync,
// rename, fsync the directory) and read back checked (magic, version, length, SHA-256).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

const MAGIC = Buffer.from('BLKSNAPS', 'latin1');
/** magic (8) · format version (4) · kind (4) · payload length (8) · SHA-256 of the payload (32). */
const HEADER_LENGTH = 8 + 4 + 4 + 8 + 32;

export type StateFileRead = { ok: true; payload: Buffer; version: number } | { ok: false; reason: string };

function digest(payload: Buffer): Buffer {
  return createHash('sha256').update(payload).digest();
}

/**
 * Writes `payload` to `file` so that after a crash at any moment the file is either the old one
 * or the new one, whole: a temp file beside it is written and fsynced, renamed over it, and the
 * directory fsynced so the rename itself is durable.
 */
export async function writeStateFile(file: string, kind: number, version: number, payload: Buffer): Promise<void> {
  const header = Buffer.alloc(HEADER_LENGTH);
  MAGIC.copy(header, 0);
  header.writeUInt32LE(version, 8);
  header.writeUInt32LE(kind, 12);
  header.writeBigUInt64LE(BigInt(payload.length), 16);
  digest(payload).copy(header, 24);
  const temp = `${file}.${process.pid}.tmp`;
  // A new file of our own, never a symlink's target: one left by a killed writer of this pid goes first.
  await fs.promises.rm(temp, { force: true });
  const handle = await fs.promises.open(temp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    await handle.writev([header, payload]);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.promises.rename(temp, file);
  await syncDirectory(path.dirname(file));
}

/** Makes the entries of `dir` durable (a rename or a file created in it). */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.promises.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Reads a state file back: its payload and format version (one of `versions`: a reader may still
 * take the formats older daemons wrote), or why it cannot be trusted (missing, another format
 * version or kind, truncated, a flipped byte). A caller treats a refusal as "no state".
 */
export async function readStateFile(file: string, kind: number, versions: number | readonly number[]): Promise<StateFileRead> {
  const accepted = typeof versions === 'number' ? [versions] : versions;
  let data: Buffer;
  try {
    data = await fs.promises.readFile(file);
  } catch (e) {
    return { ok: false, reason: `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` };
  }
  if (data.length < HEADER_LENGTH || !data.subarray(0, 8).equals(MAGIC)) return { ok: false, reason: `${file} is not a blksnap state file` };
  const fileVersion = data.readUInt32LE(8);
  if (!accepted.includes(fileVersion)) return { ok: false, reason: `${file} has format version ${fileVersion}, not ${accepted.join(' or ')}` };
  if (data.readUInt32LE(12) !== kind) return { ok: false, reason: `${file} holds another kind of state` };
  const length = Number(data.readBigUInt64LE(16));
  const payload = data.subarray(HEADER_LENGTH);
  if (payload.length !== length) return { ok: false, reason: `${file} is truncated or extended: ${payload.length} of ${length} bytes` };
  if (!digest(payload).equals(data.subarray(24, HEADER_LENGTH))) return { ok: false, reason: `${file} fails its checksum` };
  return { ok: true, payload, version: fileVersion };
}
